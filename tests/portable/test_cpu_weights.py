"""Weight-only int8 projections for bfloat16 decoding on the CPU (engines/portable/cpu_weights.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engines.portable.cpu_weights import (
    Int4Weight,
    Int8Weight,
    four_bit_grid,
    linear,
    pack,
    quantize,
    wants_int8,
)
from engines.portable.sampling import SamplingParams
from tests.portable.conftest import prompt_of


def test_int8_rows_match_the_dense_product_within_quantization_error():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=generator) * 0.05
    packed = quantize(weight, weight.bfloat16(), max_rows=4)
    x = torch.randn(3, 64, generator=generator).bfloat16()
    exact = x.float() @ weight.t()
    got = linear(x, packed).float()
    assert got.shape == (3, 96)
    # one int8 step is 1/127 of the channel's largest weight: the error stays a small fraction of the output
    assert (got - exact).abs().max() < 0.02 * exact.abs().max()
    assert not torch.equal(got, F.linear(x, packed.dense).float())  # the int8 kernel ran, not the dense one


def test_many_rows_use_the_dense_weight_exactly():
    weight = torch.randn(32, 16)
    packed = quantize(weight, weight.bfloat16(), max_rows=4)
    x = torch.randn(5, 16).bfloat16()
    assert torch.equal(linear(x, packed), F.linear(x, packed.dense))


def test_a_zero_channel_quantizes_to_zeros():
    weight = torch.zeros(8, 16)
    weight[0] = 1.0
    packed = quantize(weight, weight.bfloat16(), max_rows=1)
    assert torch.isfinite(packed.scale.float()).all()
    assert torch.equal(packed.q[1:], torch.zeros(7, 16, dtype=torch.int8))


def test_weights_on_a_four_bit_grid_are_held_as_int4():
    generator = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (64, 96), generator=generator)
    codes[:, 0::32], codes[:, 1::32] = 0, 15  # Q4_1 gives each group's minimum code 0 and its maximum 15
    scale = torch.rand(64, 3, generator=generator) * 0.01 + 0.001
    low = torch.randn(64, 3, generator=generator) * 0.02
    # what a GGUF Q4_1 tensor dequantizes to: low + code * scale per group of 32 inputs
    weight = (codes.view(64, 3, 32) * scale[..., None] + low[..., None]).view(64, 96)
    packed = pack(weight, weight.bfloat16(), max_rows=4)
    assert isinstance(packed, Int4Weight)
    assert torch.equal(four_bit_grid(weight)[0], codes.to(torch.int32))
    x = torch.randn(2, 96, generator=generator).bfloat16()
    exact = x.float() @ weight.t()
    got = linear(x, packed).float()
    # only the scales and offsets are rounded (to bfloat16): as close as bfloat16 weights would be
    dense = F.linear(x, weight.bfloat16()).float()
    assert (got - exact).abs().max() < 4 * (dense - exact).abs().max() + 1e-2 * exact.abs().max()
    rows = torch.randn(5, 96, generator=generator).bfloat16()
    assert torch.equal(linear(rows, packed), F.linear(rows, packed.dense))  # a prefill keeps the dense weight


def test_weights_off_the_grid_stay_int8():
    weight = torch.randn(16, 64)
    assert four_bit_grid(weight) is None
    assert isinstance(pack(weight, weight.bfloat16(), max_rows=4), Int8Weight)
    assert four_bit_grid(torch.randn(16, 40)) is None  # inputs not a multiple of the group


def test_which_settings_get_int8():
    assert wants_int8("auto", "cpu", torch.bfloat16)
    assert not wants_int8("auto", "cpu", torch.float32)  # the fidelity reference stays untouched
    assert not wants_int8("auto", "cuda", torch.bfloat16)
    assert not wants_int8("dense", "cpu", torch.bfloat16)
    assert wants_int8("int8", "cpu", torch.bfloat16)
    with pytest.raises(ValueError, match="needs bfloat16 on the CPU"):
        wants_int8("int8", "cpu", torch.float32)
    with pytest.raises(ValueError, match="cpu_weights must be one of"):
        wants_int8("int4", "cpu", torch.bfloat16)


def test_bfloat16_engine_decodes_with_int8_close_to_dense(make_engine):
    prompt = prompt_of(24, seed=3)
    params = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_end_id=True, return_generation_logits=True)
    dense = make_engine("llama", dtype="bfloat16", cpu_weights="dense")
    packed = make_engine("llama", dtype="bfloat16", cpu_weights="auto")
    assert isinstance(packed.runner.model.weights["layers"][0]["qkv"], Int8Weight)
    assert isinstance(packed.runner.model.weights["lm_head"], Int8Weight)
    assert not isinstance(dense.runner.model.weights["layers"][0]["qkv"], Int8Weight)
    want = dense.generate_outputs([prompt], params)[0].choices[0]
    got = packed.generate_outputs([prompt], params)[0].choices[0]
    assert len(got.token_ids) == 6
    # the prompt's layers run dense (24 rows), its one sampled row through the int8 lm_head; then an int8 decode
    # step from the same first token (random weights: later tokens may differ on near ties)
    assert got.token_ids[0] == want.token_ids[0]
    for step in (0, 1):
        ours, dense_row = got.logits[step].float().flatten(), want.logits[step].float().flatten()
        assert not torch.equal(ours, dense_row)
        assert (ours - dense_row).abs().max() < 0.05 * dense_row.abs().max()


def test_small_steps_run_on_one_thread_and_restore_the_count(make_engine):
    from engines.portable.cpu_threads import step_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with step_threads(tokens=1, small_step_tokens=4, small_step_threads=1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with step_threads(tokens=5, small_step_tokens=4, small_step_threads=1):
            assert torch.get_num_threads() == 2  # a prefill keeps every thread
        with step_threads(tokens=1, small_step_tokens=4, small_step_threads=0):
            assert torch.get_num_threads() == 2  # 0: off
        engine = make_engine("llama", dtype="bfloat16")
        seen = []
        forward = engine.runner.model.forward
        engine.runner.model.forward = lambda *args: seen.append(torch.get_num_threads()) or forward(*args)
        engine.generate([prompt_of(8, seed=1)], SamplingParams(max_new_tokens=3, temperature=0.0, ignore_end_id=True))
        assert seen == [2, 1, 1]  # the 8-token prompt on both threads, then one-token steps on one
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
