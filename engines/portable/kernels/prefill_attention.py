"""Prefill and chunked-prefill attention over the paged KV cache, in Triton (flash-attention style).

The batch is flat: the new tokens of several sequences one after another (`cu_query_lens`). Each
sequence's new K/V are already in the cache, so every query attends, through the block table, to its
cached prefix and to the new tokens up to itself (causal), within the sliding window if any.

A program owns a tile of one sequence's queries for one group of query heads sharing a KV head: the
tile's rows are (query, head) pairs, so each K/V tile is loaded once for the whole group. It walks
only the key range the tile can see and keeps an online softmax in fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engines.portable.kernels.paged_attention import dot_precision

_NEG_BIG = tl.constexpr(-1.0e30)
_LOG2E = 1.4426950408889634


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, cu_q_ptr, lens_ptr,
    qk_scale_log2, window,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kn, stride_kt, stride_kh, stride_vn, stride_vt, stride_vh, stride_tb,
    GROUP: tl.constexpr, KV_GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr, QUERIES: tl.constexpr, BLOCK_N: tl.constexpr, USE_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    head_block = tl.program_id(0)  # fastest axis: the heads of one tile run side by side, sharing L2
    tile = tl.program_id(1)
    seq = tl.program_id(2)
    q_begin = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_begin
    first = tile * QUERIES
    if first < q_len:
        ctx_len = tl.load(lens_ptr + seq)
        prefix = ctx_len - q_len  # tokens cached before this step

        rows = tl.arange(0, BLOCK_M)
        query = first + rows // GROUP
        head = head_block * GROUP + rows % GROUP
        kv_head = (head_block * GROUP) // KV_GROUP
        row_ok = query < q_len
        q_pos = prefix + query
        dims = tl.arange(0, HEAD_DIM)
        q = tl.load(q_ptr + (q_begin + query)[:, None].to(tl.int64) * stride_qt + head[:, None] * stride_qh
                    + dims[None, :], mask=row_ok[:, None], other=0.0)

        m_i = tl.full([BLOCK_M], _NEG_BIG, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

        last_pos = prefix + tl.minimum(first + QUERIES, q_len) - 1
        hi = last_pos + 1
        lo = 0
        if USE_WINDOW:
            lo = tl.maximum(prefix + first - window + 1, 0)
            lo = (lo // BLOCK_N) * BLOCK_N
        table_row = tables_ptr + seq * stride_tb
        for start in range(lo, hi, BLOCK_N):
            pos = start + tl.arange(0, BLOCK_N)
            key_ok = pos < hi
            block = tl.load(table_row + pos // PAGE, mask=key_ok, other=0).to(tl.int64)
            offset = pos % PAGE
            k = tl.load(k_ptr + block[:, None] * stride_kn + offset[:, None] * stride_kt + kv_head * stride_kh
                        + dims[None, :], mask=key_ok[:, None], other=0.0)
            v = tl.load(v_ptr + block[:, None] * stride_vn + offset[:, None] * stride_vt + kv_head * stride_vh
                        + dims[None, :], mask=key_ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2
            visible = key_ok[None, :] & (pos[None, :] <= q_pos[:, None])
            if USE_WINDOW:
                visible = visible & (q_pos[:, None] - pos[None, :] < window)
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + (q_begin + query)[:, None].to(tl.int64) * stride_ot + head[:, None] * stride_oh
                 + dims[None, :], out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, cu_query_lens: torch.Tensor,
                            context_lens: torch.Tensor, max_query_len: int, scale: float,
                            sliding_window: int | None = None, *, out: torch.Tensor | None = None,
                            block_m: int = 64, block_n: int = 64, num_warps: int = 4,
                            num_stages: int = 2) -> torch.Tensor:
    """q [T, H, D]: the new tokens of B sequences back to back, sequence b owning rows
    cu_query_lens[b]:cu_query_lens[b+1] (int32, [B+1]); context_lens [B] int32 counts its cached
    tokens after this step (prefix + new); block_tables [B, max_blocks] int32. Returns [T, H, D]."""
    tokens, heads, head_dim = q.shape
    _, page, kv_heads, _ = k_cache.shape
    batch = context_lens.numel()
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of KV heads ({kv_heads})")
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("the last dimension of q and of the caches must be contiguous")
    kv_group = heads // kv_heads
    # Rows of a tile are (query, head) pairs of one KV group when the group divides the tile evenly;
    # otherwise each program takes a single head.
    group = kv_group if kv_group & (kv_group - 1) == 0 and kv_group <= block_m // 8 else 1
    if out is None:
        out = torch.empty_like(q)
    if tokens == 0 or batch == 0:
        return out
    queries_per_tile = block_m // group
    grid = (heads // group, triton.cdiv(max_query_len, queries_per_tile), batch)
    use_window = sliding_window is not None and sliding_window > 0
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, block_tables, cu_query_lens, context_lens,
        scale * _LOG2E, sliding_window if use_window else 0,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        GROUP=group, KV_GROUP=kv_group, HEAD_DIM=head_dim, PAGE=page,
        BLOCK_M=block_m, QUERIES=queries_per_tile, BLOCK_N=block_n, USE_WINDOW=use_window,
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=num_warps, num_stages=num_stages,
    )
    return out


def gather_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                             block_tables: torch.Tensor, cu_query_lens: torch.Tensor,
                             context_lens: torch.Tensor, max_query_len: int, max_context_len: int,
                             scale: float, sliding_window: int | None = None) -> torch.Tensor:
    """The alternative to the Triton kernel: gather each sequence's context into a dense padded batch
    and run torch's scaled_dot_product_attention with an explicit mask. Same contract, plus the
    host-known `max_context_len`."""
    tokens, heads, head_dim = q.shape
    _, page, kv_heads, _ = k_cache.shape
    batch = context_lens.numel()
    device = q.device
    starts = cu_query_lens[:-1].long()
    q_lens = (cu_query_lens[1:] - cu_query_lens[:-1]).long()
    token_seq = torch.repeat_interleave(torch.arange(batch, device=device), q_lens, output_size=tokens)
    token_idx = torch.arange(tokens, device=device) - starts[token_seq]
    padded = q.new_zeros(batch, max_query_len, heads, head_dim)
    padded[token_seq, token_idx] = q
    key_pos = torch.arange(max_context_len, device=device)
    blocks = block_tables[:, torch.div(key_pos, page, rounding_mode="floor")].long()
    slots = blocks * page + key_pos % page
    keys = k_cache.view(-1, kv_heads, head_dim)[slots]  # [B, L, KVH, D]
    values = v_cache.view(-1, kv_heads, head_dim)[slots]
    q_pos = (context_lens.long() - q_lens)[:, None] + torch.arange(max_query_len, device=device)[None, :]
    visible = (key_pos[None, None, :] <= q_pos[:, :, None]) & (key_pos[None, None, :] < context_lens[:, None, None])
    if sliding_window is not None and sliding_window > 0:
        visible &= (q_pos[:, :, None] - key_pos[None, None, :]) < sliding_window
    dense = torch.nn.functional.scaled_dot_product_attention(
        padded.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), attn_mask=visible[:, None],
        scale=scale, enable_gqa=heads != kv_heads)
    return dense.transpose(1, 2)[token_seq, token_idx]
