"""Triton kernels for the per-token LoRA correction of a fused projection, in the style of Punica's SGMV.

Layout (engines/portable/lora.py, LoraSlots): for a projection of K sub-projections (q, k, v: K = 3), A holds
S slots × K subs × R rows [S·K·R, in] and B [out, S·K·R]; output row o belongs to sub j(o) (row offsets of
the subs). Token t of slot s (-1: the base model) gets
    y[t, o] += Σ_r (x[t] · A[(s·K + j(o))·R + r]) · B[o, (s·K + j(o))·R + r]

Two kernels per projection, and no mask or [T, S·K·R] intermediate in memory:
- shrink: program (slot s, sub j, block of tokens) computes h[t, j·R:(j+1)·R] = x[t] A_{s,j}ᵀ for the block's
  tokens of slot s, reading A_{s,j} once per token block;
- expand: program (slot s, token block, output block) adds h[t] B_{s,j(o)}ᵀ into y in place for those tokens.
Programs whose token block holds no token of their slot return at once, so a step of few adapters costs
about what its adapters' weights cost to read. Shapes do not depend on the slots: CUDA graphs capture them.
The torch path (LoraSlots.delta) stays the reference and the CPU path. The rank R (max_lora_rank) must be a
power of two of at least 16: tl.dot's smallest tile.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 16
BLOCK_K = 64
BLOCK_N = 64


@triton.jit
def _shrink_kernel(x_ptr, a_ptr, slots_ptr, h_ptr, n_tokens, n_in, stride_x, stride_a, stride_h,
                   SUBS: tl.constexpr, RANK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                   PRECISION: tl.constexpr):
    slot_sub = tl.program_id(0)  # slot * SUBS + sub: the A rows it reads
    slot = slot_sub // SUBS
    sub = slot_sub % SUBS
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    token_slots = tl.load(slots_ptr + rows, mask=rows < n_tokens, other=-1)
    mine = token_slots == slot
    if tl.max(mine.to(tl.int32), axis=0) == 0:
        return
    ranks = tl.arange(0, RANK)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, RANK], dtype=tl.float32)
    a_rows = a_ptr + (slot_sub * RANK + ranks).to(tl.int64)[:, None] * stride_a
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x
    for k in range(0, n_in, BLOCK_K):
        ks = k + offs_k
        k_ok = ks < n_in
        x = tl.load(x_rows + ks[None, :], mask=mine[:, None] & k_ok[None, :], other=0.0)
        a = tl.load(a_rows + ks[None, :], mask=k_ok[None, :], other=0.0)
        acc += tl.dot(x, tl.trans(a.to(x.dtype)), input_precision=PRECISION)
    h_cols = sub * RANK + ranks
    tl.store(h_ptr + rows.to(tl.int64)[:, None] * stride_h + h_cols[None, :], acc, mask=mine[:, None])


@triton.jit
def _expand_kernel(h_ptr, b_ptr, slots_ptr, y_ptr, n_tokens, n_out, first_k, first_v, stride_h, stride_b, stride_y,
                   SUBS: tl.constexpr, RANK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   PRECISION: tl.constexpr):
    slot = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    token_slots = tl.load(slots_ptr + rows, mask=rows < n_tokens, other=-1)
    mine = token_slots == slot
    if tl.max(mine.to(tl.int32), axis=0) == 0:
        return
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n_out
    col_sub = (cols >= first_k).to(tl.int32) + (cols >= first_v).to(tl.int32)  # which sub-projection owns the row
    ranks = tl.arange(0, RANK)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    b_rows = b_ptr + cols.to(tl.int64)[:, None] * stride_b
    for sub in tl.static_range(SUBS):
        h = tl.load(h_ptr + rows.to(tl.int64)[:, None] * stride_h + (sub * RANK + ranks)[None, :],
                    mask=mine[:, None], other=0.0)
        b_cols = (slot * SUBS + sub) * RANK + ranks
        b = tl.load(b_rows + b_cols[None, :], mask=(col_ok & (col_sub == sub))[:, None], other=0.0)
        acc += tl.dot(h.to(b.dtype), tl.trans(b), input_precision=PRECISION)
    y_tile = y_ptr + rows.to(tl.int64)[:, None] * stride_y + cols[None, :]
    keep = mine[:, None] & col_ok[None, :]
    y = tl.load(y_tile, mask=keep, other=0.0)
    tl.store(y_tile, (y.to(tl.float32) + acc).to(y.dtype), mask=keep)


def add_lora(y: torch.Tensor, x: torch.Tensor, a_all: torch.Tensor, b_all: torch.Tensor, token_slots: torch.Tensor,
             num_slots: int, subs: int, rank: int, row_offsets: list[int]) -> torch.Tensor:
    """y [T, out] += each token's adapter correction of x [T, in], in place; returns y.
    `row_offsets`: where each sub-projection's output rows start, then `out` (engines/portable/lora.py)."""
    n_tokens, n_in = x.shape
    n_out = y.shape[1]
    x = x.contiguous()
    h = torch.zeros(n_tokens, subs * rank, device=x.device, dtype=torch.float32)
    precision = "ieee" if x.dtype == torch.float32 else None  # fp32 engines get fp32 products, as cuBLAS gives
    blocks_m = triton.cdiv(n_tokens, BLOCK_M)
    _shrink_kernel[(num_slots * subs, blocks_m)](
        x, a_all, token_slots, h, n_tokens, n_in, x.stride(0), a_all.stride(0), h.stride(0),
        SUBS=subs, RANK=rank, BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K, PRECISION=precision)
    starts = [*row_offsets[1:subs], n_out, n_out][:2]  # first rows of sub 1 and sub 2 (out when absent)
    _expand_kernel[(num_slots, blocks_m, triton.cdiv(n_out, BLOCK_N))](
        h, b_all, token_slots, y, n_tokens, n_out, starts[0], starts[1], h.stride(0), b_all.stride(0), y.stride(0),
        SUBS=subs, RANK=rank, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, PRECISION=precision)
    return y
