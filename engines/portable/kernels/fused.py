"""Fused elementwise kernels of the decoder layer: residual add + RMSNorm, SiLU(gate) * up, and rotary
embedding of q and k fused with the K/V cache write.

Unfused, each of these is three to eight small kernels per layer; at small batch their launch and
memory round trips cost as much as the layer's GEMMs. Every kernel rounds where transformers' eager
Llama/Mistral code rounds (each bf16 op's result is rounded to bf16 before the next op) and uses the
same libdevice exp and rsqrt, so only the order of the RMSNorm's sum differs. The model uses them in
half precision; in fp32, where that order would show, it keeps the plain torch ops.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def _add_rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, eps, n_cols,
                         stride_x, stride_r, stride_o, stride_ro,
                         HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    dtype = out_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(dtype)
        tl.store(res_out_ptr + row * stride_ro + cols, x, mask=mask)
    xf = x.to(tl.float32)
    variance = tl.sum(xf * xf, axis=0) / n_cols
    normed = (xf * libdevice.rsqrt(variance + eps)).to(dtype)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    tl.store(out_ptr + row * stride_o + cols, (normed.to(tl.float32) * w.to(tl.float32)).to(dtype), mask=mask)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual) * weight, x + residual) for x [T, N]; with no residual, (norm(x), x).

    The sum is the residual stream of the next layer, rounded to x's dtype as transformers does."""
    tokens, n_cols = x.shape
    if x.stride(1) != 1 or (residual is not None and residual.stride(1) != 1):
        raise ValueError("rows of x and residual must be contiguous")
    out = torch.empty_like(x)
    summed = torch.empty_like(x) if residual is not None else x
    if tokens:
        _add_rms_norm_kernel[(tokens,)](
            x, residual if residual is not None else x, weight, out, summed, eps, n_cols,
            x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0), summed.stride(0),
            HAS_RESIDUAL=residual is not None, BLOCK=triton.next_power_of_2(n_cols),
            num_warps=8 if n_cols >= 4096 else 4, enable_fp_fusion=False,
        )
    return out, summed


@triton.jit
def _silu_mul_kernel(gate_up_ptr, out_ptr, n_cols, stride_in, stride_out, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dtype = out_ptr.dtype.element_ty
    gate = tl.load(gate_up_ptr + row * stride_in + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * stride_in + n_cols + cols, mask=mask, other=0.0)
    activated = (gate / (1.0 + libdevice.exp(-gate))).to(dtype)
    tl.store(out_ptr + row * stride_out + cols, (activated.to(tl.float32) * up.to(tl.float32)).to(dtype), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2I] holding gate then up -> silu(gate) * up [T, I]."""
    tokens, width = gate_up.shape
    if gate_up.stride(1) != 1 or width % 2:
        raise ValueError("gate_up must be [T, 2I] with contiguous rows")
    n_cols = width // 2
    out = torch.empty(tokens, n_cols, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    if tokens:
        _silu_mul_kernel[(tokens, triton.cdiv(n_cols, block))](
            gate_up, out, n_cols, gate_up.stride(0), out.stride(0), BLOCK=block, num_warps=4)
    return out


@triton.jit
def _rotate(x_ptr, heads, halves, c, s, mask, HALF: tl.constexpr):
    """Rotary embedding of [heads, D] at x_ptr, rounded as transformers rounds: x*cos and
    rotate_half(x)*sin each to the dtype, then their sum."""
    first = tl.load(x_ptr + heads[:, None] * (2 * HALF) + halves[None, :], mask=mask, other=0.0)
    second = tl.load(x_ptr + heads[:, None] * (2 * HALF) + HALF + halves[None, :], mask=mask, other=0.0)
    dtype = first.dtype
    f, g = first.to(tl.float32), second.to(tl.float32)
    out_first = ((f * c).to(dtype).to(tl.float32) - (g * s).to(dtype).to(tl.float32)).to(dtype)
    out_second = ((g * c).to(dtype).to(tl.float32) + (f * s).to(dtype).to(tl.float32)).to(dtype)
    return out_first, out_second


@triton.jit
def _rope_write_kv_kernel(qkv_ptr, pos_ptr, cos_ptr, sin_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
                          stride_t, stride_cos, stride_qt, stride_cs, stride_ch,
                          HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, KV_HEADS: tl.constexpr,
                          KV_PAD: tl.constexpr, HALF: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + token).to(tl.int64)
    halves = tl.arange(0, HALF)
    # the tables hold cat(freqs, freqs): the first half has every angle
    c = tl.load(cos_ptr + pos * stride_cos + halves).to(tl.float32)[None, :]
    s = tl.load(sin_ptr + pos * stride_cos + halves).to(tl.float32)[None, :]
    row = qkv_ptr + token * stride_t

    heads = tl.arange(0, HEADS_PAD)
    mask = (heads < HEADS)[:, None]
    q1, q2 = _rotate(row, heads, halves, c, s, mask, HALF)
    q_row = q_out_ptr + token * stride_qt + heads[:, None] * (2 * HALF) + halves[None, :]
    tl.store(q_row, q1, mask=mask)
    tl.store(q_row + HALF, q2, mask=mask)

    slot = tl.load(slots_ptr + token).to(tl.int64)
    if slot >= 0:  # padded rows of a CUDA-graph batch write nothing
        kv_heads = tl.arange(0, KV_PAD)
        kv_mask = (kv_heads < KV_HEADS)[:, None]
        k_row = row + HEADS * 2 * HALF
        k1, k2 = _rotate(k_row, kv_heads, halves, c, s, kv_mask, HALF)
        offsets = kv_heads[:, None] * stride_ch + halves[None, :]
        tl.store(k_cache_ptr + slot * stride_cs + offsets, k1, mask=kv_mask)
        tl.store(k_cache_ptr + slot * stride_cs + offsets + HALF, k2, mask=kv_mask)
        v_row = k_row + KV_HEADS * 2 * HALF
        v_offsets = kv_heads[:, None] * (2 * HALF) + halves[None, :]
        v1 = tl.load(v_row + v_offsets, mask=kv_mask, other=0.0)
        v2 = tl.load(v_row + v_offsets + HALF, mask=kv_mask, other=0.0)
        tl.store(v_cache_ptr + slot * stride_cs + offsets, v1, mask=kv_mask)
        tl.store(v_cache_ptr + slot * stride_cs + offsets + HALF, v2, mask=kv_mask)


def rope_write_kv(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                  num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """From the fused projection qkv [T, (H + 2 KVH) * D]: rotates q and k by `positions` [T], writes
    k and v into the paged caches [num_blocks, block_size, KVH, D] at `slot_mapping` [T] (negative:
    skip), and returns the rotated q [T, H, D]. cos/sin are [max_positions, D] tables in qkv's dtype."""
    tokens = qkv.shape[0]
    head_dim = k_cache.shape[-1]
    if qkv.stride(1) != 1 or qkv.shape[1] != (num_heads + 2 * num_kv_heads) * head_dim:
        raise ValueError(f"qkv {tuple(qkv.shape)} does not hold {num_heads} + 2 x {num_kv_heads} heads of {head_dim}")
    if head_dim & (head_dim - 1) or not k_cache.is_contiguous() or not v_cache.is_contiguous():
        raise ValueError("head_dim must be a power of two and the caches contiguous")
    q = torch.empty(tokens, num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    if tokens:
        k_flat = k_cache.view(-1, num_kv_heads, head_dim)
        v_flat = v_cache.view(-1, num_kv_heads, head_dim)
        _rope_write_kv_kernel[(tokens,)](
            qkv, positions, cos, sin, q, k_flat, v_flat, slot_mapping,
            qkv.stride(0), cos.stride(0), q.stride(0), k_flat.stride(0), k_flat.stride(1),
            HEADS=num_heads, HEADS_PAD=triton.next_power_of_2(num_heads), KV_HEADS=num_kv_heads,
            KV_PAD=triton.next_power_of_2(num_kv_heads), HALF=head_dim // 2, num_warps=4,
            enable_fp_fusion=False,  # x*cos and rotate(x)*sin are rounded apart, as in transformers
        )
    return q
