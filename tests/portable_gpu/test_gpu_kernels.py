"""The Triton kernels against the plain-torch references, on a CUDA GPU.

Inputs are fresh random draws, block tables are shuffled, and outputs are poisoned with NaN before
each call so an unwritten element fails the check.
"""
from __future__ import annotations

import math

import pytest
import torch

import engines.portable.kernels as kernels
from engines.portable.kernels import reference
from tests.portable_gpu.helpers import BLOCK_SIZE, paged_cache, relative_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(kernels.unavailable_reason() is not None,
                       reason=f"Triton kernels unavailable: {kernels.unavailable_reason()}"),
]

HEAD_DIM = 128
SCALE = 1 / math.sqrt(HEAD_DIM)
TOLERANCE = 1e-2  # bf16/fp16 inputs and output, fp32 accumulation


def _lengths(batch: int, most: int, gen: torch.Generator) -> list[int]:
    lengths = torch.randint(1, most + 1, (batch,), generator=gen).tolist()
    lengths[0] = most  # the longest case is always present
    return lengths


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads,kv_heads", [(32, 32), (32, 8)])
@pytest.mark.parametrize("batch,most", [(1, 1), (1, 2048), (3, 17), (16, 700), (64, 2048)])
@pytest.mark.parametrize("window", [None, 256])
@pytest.mark.parametrize("num_splits", [None, 1, 5])
def test_decode_matches_reference(dtype, heads, kv_heads, batch, most, window, num_splits):
    gen = torch.Generator(device="cuda").manual_seed(batch * 7919 + most)
    cpu_gen = torch.Generator().manual_seed(batch + most)
    lengths = _lengths(batch, most, cpu_gen)
    k_cache, v_cache, tables, lens = paged_cache(lengths, kv_heads, HEAD_DIM, dtype, "cuda", gen)
    q = torch.randn(batch, heads, HEAD_DIM, generator=gen, device="cuda").to(dtype)
    out = torch.full_like(q, float("nan"))
    kernels.paged_decode_attention(q, k_cache, v_cache, tables, lens, SCALE, window,
                                   num_splits=num_splits, out=out)
    expected = reference.decode_attention_ref(q, k_cache, v_cache, tables, lens, SCALE, window)
    assert not out.isnan().any()
    assert relative_error(out, expected) < TOLERANCE


def test_decode_ignores_table_entries_past_the_context():
    """Padded CUDA-graph rows keep stale table entries; only context_lens may decide what is read."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    k_cache, v_cache, tables, lens = paged_cache([300, 300], 8, HEAD_DIM, torch.bfloat16, "cuda", gen)
    lens[1] = 40
    q = torch.randn(2, 32, HEAD_DIM, generator=gen, device="cuda").to(torch.bfloat16)
    expected = reference.decode_attention_ref(q, k_cache, v_cache, tables, lens, SCALE)
    tables[1, 3:] = 10_000_000  # would fault if read
    out = kernels.paged_decode_attention(q, k_cache, v_cache, tables, lens, SCALE, num_splits=4)
    torch.cuda.synchronize()
    assert relative_error(out, expected) < TOLERANCE


def _prefill_case(chunks: list[tuple[int, int]], heads: int, kv_heads: int, dtype, seed: int):
    """chunks: (cached prefix, new tokens) per sequence."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    lengths = [prefix + new for prefix, new in chunks]
    k_cache, v_cache, tables, lens = paged_cache(lengths, kv_heads, HEAD_DIM, dtype, "cuda", gen)
    q_lens = [new for _, new in chunks]
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q = torch.randn(sum(q_lens), heads, HEAD_DIM, generator=gen, device="cuda").to(dtype)
    return q, k_cache, v_cache, tables, cu, lens, max(q_lens), max(lengths)


PREFILL_BATCHES = {
    "one-token": [(0, 1)],
    "single-prompt": [(0, 2048)],
    "mixed": [(0, 1), (0, 37), (0, 256), (100, 1), (512, 64), (1900, 148)],
    "chunked": [(1024, 512), (1536, 512), (16, 16), (0, 700)],
    "many-short": [(i % 40, 1 + (i * 13) % 90) for i in range(64)],
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads,kv_heads", [(32, 32), (32, 8)])
@pytest.mark.parametrize("batch_name", list(PREFILL_BATCHES))
@pytest.mark.parametrize("window", [None, 256])
def test_prefill_matches_reference(dtype, heads, kv_heads, batch_name, window):
    case = _prefill_case(PREFILL_BATCHES[batch_name], heads, kv_heads, dtype, seed=len(batch_name))
    q, k_cache, v_cache, tables, cu, lens, max_q, max_ctx = case
    expected = reference.prefill_attention_ref(q, k_cache, v_cache, tables, cu, lens, SCALE, window)
    out = torch.full_like(q, float("nan"))
    kernels.paged_prefill_attention(q, k_cache, v_cache, tables, cu, lens, max_q, SCALE, window, out=out)
    assert not out.isnan().any()
    assert relative_error(out, expected) < TOLERANCE
    gathered = kernels.gather_prefill_attention(q, k_cache, v_cache, tables, cu, lens, max_q, max_ctx, SCALE, window)
    assert relative_error(gathered, expected) < TOLERANCE


@pytest.mark.parametrize("kv_heads", [8, 32])
@pytest.mark.parametrize("tokens", [1, 77, 1024])
def test_write_kv_scatters_and_skips_negative_slots(kv_heads, tokens):
    gen = torch.Generator(device="cuda").manual_seed(tokens)
    k_cache, v_cache, _, _ = paged_cache([tokens + 32], kv_heads, HEAD_DIM, torch.bfloat16, "cuda", gen)
    num_slots = k_cache.shape[0] * BLOCK_SIZE
    slots = torch.randperm(num_slots, generator=gen, device="cuda")[:tokens]
    slots[::5] = -1  # padding rows
    # k and v as views of one fused QKV projection output, as the model runner will pass them
    qkv = torch.randn(tokens, (32 + 2 * kv_heads) * HEAD_DIM, generator=gen, device="cuda").to(torch.bfloat16)
    _, k, v = qkv.split([32 * HEAD_DIM, kv_heads * HEAD_DIM, kv_heads * HEAD_DIM], dim=1)
    k, v = k.view(tokens, kv_heads, HEAD_DIM), v.view(tokens, kv_heads, HEAD_DIM)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    reference.write_kv_ref(k, v, expected_k, expected_v, slots)
    kernels.write_kv(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, expected_k)
    assert torch.equal(v_cache, expected_v)
