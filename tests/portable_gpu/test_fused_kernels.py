"""The fused layer kernels against the engine's plain-torch ops, on a CUDA GPU.

The torch ops round like transformers' eager code, and so must the kernels: the residual sum and the
rotary embedding are exact, the RMSNorm and SiLU agree but for the order of the norm's sum.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import engines.portable.kernels as kernels
from engines.portable.config import ModelConfig
from engines.portable.model import rms_norm
from engines.portable.rope import RotaryEmbedding
from tests.portable_gpu.helpers import BLOCK_SIZE, paged_cache

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(kernels.unavailable_reason() is not None,
                       reason=f"needs a CUDA GPU and triton: {kernels.unavailable_reason()}"),
]

HEAD_DIM = 128


def _close_but_for_rounding(out: torch.Tensor, ref: torch.Tensor) -> None:
    """In bf16: within two rounding steps everywhere and bit-equal almost everywhere. In fp32 the
    order of the norm's sum shows (about sqrt(N) ulps); 1e-5 relative bounds it."""
    if ref.dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        return
    step = torch.finfo(ref.dtype).eps * ref.float().abs().clamp(min=1e-3)
    assert ((out.float() - ref.float()).abs() <= 2 * step).all()
    assert (out == ref).float().mean().item() > 0.97


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tokens,hidden", [(1, 4096), (37, 4096), (256, 5120), (3, 1000)])
def test_add_rms_norm_matches_the_unfused_ops(dtype, tokens, hidden):
    gen = torch.Generator(device="cuda").manual_seed(tokens)
    x = torch.randn(tokens, hidden, generator=gen, device="cuda").to(dtype)
    residual = torch.randn(tokens, hidden, generator=gen, device="cuda").to(dtype)
    weight = (1 + 0.1 * torch.randn(hidden, generator=gen, device="cuda")).to(dtype)
    out, summed = kernels.add_rms_norm(x, residual, weight, 1e-5)
    assert torch.equal(summed, residual + x)
    _close_but_for_rounding(out, rms_norm(residual + x, weight, 1e-5))
    first, same = kernels.add_rms_norm(x, None, weight, 1e-5)
    assert same is x
    _close_but_for_rounding(first, rms_norm(x, weight, 1e-5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tokens,intermediate", [(1, 11008), (64, 14336), (5, 1000)])
def test_silu_mul_matches_the_unfused_ops(dtype, tokens, intermediate):
    gen = torch.Generator(device="cuda").manual_seed(intermediate)
    gate_up = (3 * torch.randn(tokens, 2 * intermediate, generator=gen, device="cuda")).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    _close_but_for_rounding(kernels.silu_mul(gate_up), F.silu(gate) * up)


def _config(heads: int, kv_heads: int) -> ModelConfig:
    return ModelConfig(architecture="LlamaForCausalLM", vocab_size=100, hidden_size=heads * HEAD_DIM,
                       intermediate_size=64, num_layers=1, num_heads=heads, num_kv_heads=kv_heads,
                       head_dim=HEAD_DIM, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None,
                       max_position_embeddings=4096, sliding_window=None, tie_word_embeddings=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("heads,kv_heads", [(32, 32), (32, 8)])
@pytest.mark.parametrize("tokens", [1, 77])
@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32])
def test_rope_write_kv_rotates_and_scatters_exactly(dtype, heads, kv_heads, tokens, slot_dtype):
    gen = torch.Generator(device="cuda").manual_seed(tokens + heads + kv_heads)
    rope = RotaryEmbedding(_config(heads, kv_heads), 4096, torch.device("cuda"), dtype)
    k_cache, v_cache, _, _ = paged_cache([tokens + 32], kv_heads, HEAD_DIM, dtype, "cuda", gen)
    slots = torch.randperm(k_cache.shape[0] * BLOCK_SIZE, generator=gen, device="cuda")[:tokens]
    slots[1::4] = -1  # padded rows of a graph batch
    positions = torch.randint(0, 4096, (tokens,), generator=gen, device="cuda")
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * HEAD_DIM, generator=gen, device="cuda").to(dtype)
    q, k, v = qkv.split([heads * HEAD_DIM, kv_heads * HEAD_DIM, kv_heads * HEAD_DIM], dim=1)
    expected_q = rope(q.reshape(tokens, heads, HEAD_DIM), positions)
    expected_k_cache, expected_v_cache = k_cache.clone(), v_cache.clone()
    keep = slots >= 0
    flat = (-1, kv_heads, HEAD_DIM)
    rotated_k = rope(k.reshape(tokens, kv_heads, HEAD_DIM), positions)
    expected_k_cache.view(flat)[slots[keep]] = rotated_k[keep]
    expected_v_cache.view(flat)[slots[keep]] = v.reshape(tokens, kv_heads, HEAD_DIM)[keep]
    got_q = kernels.rope_write_kv(qkv, positions.to(slot_dtype), rope.cos, rope.sin, k_cache, v_cache,
                                  slots.to(slot_dtype), heads, kv_heads)
    assert torch.equal(got_q, expected_q)
    assert torch.equal(k_cache, expected_k_cache)
    assert torch.equal(v_cache, expected_v_cache)


@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize("n,k", [(4096, 4096), (1000, 1000), (12288, 4096), (37, 8000)])
def test_gemv_matches_cublas(rows, n, k):
    gen = torch.Generator(device="cuda").manual_seed(n + k + rows)
    x = torch.randn(rows, k, generator=gen, device="cuda").to(torch.bfloat16)
    weight = torch.randn(n, k, generator=gen, device="cuda").to(torch.bfloat16)
    expected = x.float() @ weight.float().T
    got = kernels.gemv(x, weight)
    assert got.shape == (rows, n) and got.dtype == torch.bfloat16
    # fp32 accumulation in both; only the bf16 rounding of the result and the summation order differ
    assert ((got.float() - expected).norm() / expected.norm()).item() < 5e-3
    assert ((torch.nn.functional.linear(x, weight).float() - expected).norm() / expected.norm()).item() < 5e-3
