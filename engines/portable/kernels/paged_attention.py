"""Paged decode attention in Triton: one new query token per sequence against its paged KV cache.

Each program owns one (sequence, KV head, split): it loads the whole group of query heads that share
that KV head, so every K/V row is read from memory once per group, walks the sequence's block table
directly (no gathered copy of the context), and keeps an online softmax in fp32. When the batch has
too few (sequence, KV head) pairs to fill the GPU, the context is cut into splits that run in
parallel and a second kernel merges their partial results (flash-decoding).

The grid depends only on host-known sizes (batch, heads, splits), never on context lengths held on
the device, so a launch can be captured in a CUDA graph and replayed with new lengths.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# Finite stand-in for -inf as the running maximum: keeps exp2(m_old - m_new) defined when a
# whole tile is masked out.
_NEG_BIG = tl.constexpr(-1.0e30)
_LOG2E = 1.4426950408889634
_MIN_TOKENS_PER_SPLIT = 128


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, part_acc_ptr, part_ml_ptr,
    qk_scale_log2, window,
    stride_qb, stride_qh,
    stride_kn, stride_kt, stride_kh,
    stride_vn, stride_vt, stride_vh,
    stride_tb,
    stride_ob, stride_oh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, USE_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    ctx_len = tl.load(lens_ptr + seq)
    start = 0
    if USE_WINDOW:
        start = tl.maximum(ctx_len - window, 0)
    # Each split takes an equal, tile-aligned share of [start, ctx_len).
    span = ctx_len - start
    per_split = tl.cdiv(tl.cdiv(span, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = start + split * per_split
    hi = tl.minimum(lo + per_split, ctx_len)

    rows = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < GROUP
    heads = kv_head * GROUP + rows
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + dims[None, :],
                mask=row_ok[:, None], other=0.0)

    m_i = tl.full([GROUP_PAD], _NEG_BIG, tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)

    table_row = tables_ptr + seq * stride_tb
    for tile in range(lo, hi, BLOCK_N):
        pos = tile + tl.arange(0, BLOCK_N)
        valid = pos < hi
        block = tl.load(table_row + pos // PAGE, mask=valid, other=0).to(tl.int64)
        offset = pos % PAGE
        k = tl.load(k_ptr + block[:, None] * stride_kn + offset[:, None] * stride_kt
                    + kv_head * stride_kh + dims[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_ptr + block[:, None] * stride_vn + offset[:, None] * stride_vt
                    + kv_head * stride_vh + dims[None, :], mask=valid[:, None], other=0.0)
        # [GROUP_PAD, BLOCK_N], log2 domain
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + seq * stride_ob + heads[:, None] * stride_oh + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        # partials: acc [B, H, S, D] and (m, l) [B, H, S, 2], contiguous
        num_heads = tl.num_programs(1) * GROUP
        base = (seq * num_heads + heads) * NUM_SPLITS + split
        tl.store(part_acc_ptr + base[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_ok[:, None])
        tl.store(part_ml_ptr + base * 2, m_i, mask=row_ok)
        tl.store(part_ml_ptr + base * 2 + 1, l_i, mask=row_ok)


@triton.jit
def _merge_kernel(part_acc_ptr, part_ml_ptr, out_ptr, stride_ob, stride_oh,
                  HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    num_heads = tl.num_programs(1)
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, HEAD_DIM)
    ok = splits < NUM_SPLITS
    base = (seq * num_heads + head) * NUM_SPLITS + splits
    m = tl.load(part_ml_ptr + base * 2, mask=ok, other=_NEG_BIG)
    lsum = tl.load(part_ml_ptr + base * 2 + 1, mask=ok, other=0.0)
    acc = tl.load(part_acc_ptr + base[:, None] * HEAD_DIM + dims[None, :], mask=ok[:, None], other=0.0)
    m_all = tl.max(m, 0)
    w = tl.exp2(m - m_all)
    total = tl.sum(lsum * w, 0)
    out = tl.sum(acc * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty))


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get true fp32 products (tl.dot would round them to tf32); half types are exact anyway."""
    return "ieee" if dtype == torch.float32 else "tf32"


_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def choose_num_splits(batch: int, kv_heads: int, max_context_len: int, device: torch.device,
                      block_n: int = 64) -> int:
    """Splits per (sequence, KV head) so that about two waves of programs cover the SMs, each split
    keeping at least a few tiles of work."""
    programs = batch * kv_heads
    wanted = math.ceil(2 * _sm_count(device) / programs)
    most = max(1, math.ceil(max_context_len / max(_MIN_TOKENS_PER_SPLIT, block_n)))
    return max(1, min(wanted, most, 64))


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                           sliding_window: int | None = None, *, num_splits: int | None = None,
                           max_context_len: int | None = None, out: torch.Tensor | None = None,
                           block_n: int = 64, num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """Attention of one new token per sequence over its paged context.

    q [B, H, D]; k_cache, v_cache [num_blocks, block_size, KVH, D]; block_tables [B, max_blocks] int32;
    context_lens [B] int32 (tokens in the cache, the new one included). Returns [B, H, D] in q's dtype.
    `num_splits` fixes the split-K factor (do so under CUDA graphs); by default it is chosen from the
    batch size and `max_context_len` (or, without it, the block table's width).
    """
    batch, heads, head_dim = q.shape
    num_blocks, page, kv_heads, _ = k_cache.shape
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of KV heads ({kv_heads})")
    if head_dim & (head_dim - 1) or head_dim < 16:
        raise ValueError(f"head_dim must be a power of two >= 16, got {head_dim}")
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("the last dimension of q and of the caches must be contiguous")
    group = heads // kv_heads
    if num_splits is None:
        bound = max_context_len if max_context_len is not None else block_tables.shape[1] * page
        num_splits = choose_num_splits(batch, kv_heads, bound, q.device, block_n)
    if out is None:
        out = torch.empty_like(q)
    if batch == 0:
        return out
    if num_splits > 1:
        part_acc = torch.empty(batch, heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        part_ml = torch.empty(batch, heads, num_splits, 2, dtype=torch.float32, device=q.device)
    else:
        part_acc = part_ml = out  # unused
    use_window = sliding_window is not None and sliding_window > 0
    _decode_kernel[(batch, kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, context_lens, out, part_acc, part_ml,
        scale * _LOG2E, sliding_window if use_window else 0,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, PAGE=page,
        BLOCK_N=block_n, NUM_SPLITS=num_splits, USE_WINDOW=use_window,
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=num_warps, num_stages=num_stages,
    )
    if num_splits > 1:
        _merge_kernel[(batch, heads)](
            part_acc, part_ml, out, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, NUM_SPLITS=num_splits, SPLITS_PAD=max(2, triton.next_power_of_2(num_splits)),
            num_warps=4,
        )
    return out
