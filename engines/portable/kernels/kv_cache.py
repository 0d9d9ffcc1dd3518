"""Writes the new tokens' K and V into the paged caches in one Triton launch.

One program per token copies all of its KV heads for both K and V. A negative slot means "skip":
CUDA-graph batches are padded to a captured size, and the padding rows must not touch the cache.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_cks, stride_ckh, stride_cvs, stride_cvh,
                     KV_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr):
    token = tl.program_id(0)
    slot = tl.load(slots_ptr + token).to(tl.int64)
    if slot >= 0:
        heads = tl.arange(0, HEADS_PAD)
        dims = tl.arange(0, HEAD_DIM)
        mask = (heads < KV_HEADS)[:, None]
        k = tl.load(k_ptr + token * stride_kt + heads[:, None] * stride_kh + dims[None, :], mask=mask)
        v = tl.load(v_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :], mask=mask)
        tl.store(k_cache_ptr + slot * stride_cks + heads[:, None] * stride_ckh + dims[None, :], k, mask=mask)
        tl.store(v_cache_ptr + slot * stride_cvs + heads[:, None] * stride_cvh + dims[None, :], v, mask=mask)


def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """k, v [T, KVH, D] (views of a fused QKV output are fine); caches [num_blocks, block_size, KVH, D];
    slot_mapping [T] int64 with slot = block * block_size + offset, negative to skip the row."""
    tokens, kv_heads, head_dim = k.shape
    if k_cache.shape[-2:] != (kv_heads, head_dim) or v.shape != k.shape:
        raise ValueError(f"k {tuple(k.shape)}, v {tuple(v.shape)} do not fit the cache {tuple(k_cache.shape)}")
    if k.stride(2) != 1 or v.stride(2) != 1 or not k_cache.is_contiguous() or not v_cache.is_contiguous():
        raise ValueError("the head dimension of k/v and the whole caches must be contiguous")
    if tokens == 0:
        return
    k_flat = k_cache.view(-1, kv_heads, head_dim)
    v_flat = v_cache.view(-1, kv_heads, head_dim)
    _write_kv_kernel[(tokens,)](
        k, v, k_flat, v_flat, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_flat.stride(0), k_flat.stride(1), v_flat.stride(0), v_flat.stride(1),
        KV_HEADS=kv_heads, HEADS_PAD=triton.next_power_of_2(kv_heads), HEAD_DIM=head_dim,
        num_warps=4,
    )
