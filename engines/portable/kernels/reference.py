"""Plain-torch references for the kernels: slow, obvious, fp32 inside. Tests compare against these."""
from __future__ import annotations

import torch


def _context(cache: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
    """One sequence's first `length` cached rows, [length, KVH, D], read through its block table."""
    page = cache.shape[1]
    pos = torch.arange(length, device=cache.device)
    return cache[table[pos // page].long(), pos % page]


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor,
            scale: float) -> torch.Tensor:
    """q [Lq, H, D], keys/values [Lk, KVH, D], visible [Lq, Lk] -> [Lq, H, D] in fp32."""
    group = q.shape[1] // keys.shape[1]
    keys = keys.float().repeat_interleave(group, dim=1)
    values = values.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), keys) * scale
    scores = scores.masked_fill(~visible[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), values)


def decode_attention_ref(q, k_cache, v_cache, block_tables, context_lens, scale, sliding_window=None):
    """q [B, H, D] -> [B, H, D] fp32."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    for b, length in enumerate(context_lens.tolist()):
        keys = _context(k_cache, block_tables[b], length)
        values = _context(v_cache, block_tables[b], length)
        pos = torch.arange(length, device=q.device)
        visible = torch.ones(1, length, dtype=torch.bool, device=q.device)
        if sliding_window:
            visible &= (length - 1 - pos)[None] < sliding_window
        out[b] = _attend(q[b:b + 1], keys, values, visible, scale)[0]
    return out


def prefill_attention_ref(q, k_cache, v_cache, block_tables, cu_query_lens, context_lens, scale,
                          sliding_window=None):
    """q [T, H, D] flat over sequences -> [T, H, D] fp32."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    bounds = cu_query_lens.tolist()
    for b, length in enumerate(context_lens.tolist()):
        lo, hi = bounds[b], bounds[b + 1]
        if hi == lo:
            continue
        keys = _context(k_cache, block_tables[b], length)
        values = _context(v_cache, block_tables[b], length)
        q_pos = torch.arange(length - (hi - lo), length, device=q.device)
        k_pos = torch.arange(length, device=q.device)
        visible = k_pos[None, :] <= q_pos[:, None]
        if sliding_window:
            visible &= (q_pos[:, None] - k_pos[None, :]) < sliding_window
        out[lo:hi] = _attend(q[lo:hi], keys, values, visible, scale)
    return out


def write_kv_ref(k, v, k_cache, v_cache, slot_mapping) -> None:
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    kv_heads, head_dim = k_cache.shape[-2:]
    k_cache.view(-1, kv_heads, head_dim)[slots] = k[keep]
    v_cache.view(-1, kv_heads, head_dim)[slots] = v[keep]


def decode_attention_batched_ref(q, k_cache, v_cache, block_tables, context_lens, max_context_len, scale,
                                 sliding_window=None):
    """The same function as `decode_attention_ref` without the Python loop (gather into a padded
    batch, masked softmax in the input dtype); used as the plain-torch baseline in benchmarks."""
    batch, heads, head_dim = q.shape
    page, kv_heads = k_cache.shape[1], k_cache.shape[2]
    pos = torch.arange(max_context_len, device=q.device)
    slots = block_tables[:, pos // page].long() * page + pos % page
    keys = k_cache.view(-1, kv_heads, head_dim)[slots]  # [B, L, KVH, D]
    values = v_cache.view(-1, kv_heads, head_dim)[slots]
    group = heads // kv_heads
    qg = q.view(batch, kv_heads, group, head_dim)
    scores = torch.einsum("bkgd,blkd->bkgl", qg, keys).float() * scale
    visible = pos[None, :] < context_lens[:, None]
    if sliding_window:
        visible &= (context_lens[:, None] - 1 - pos[None, :]) < sliding_window
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    out = torch.einsum("bkgl,blkd->bkgd", scores.softmax(-1).to(values.dtype), values)
    return out.reshape(batch, heads, head_dim)
