"""Greedy decoding is token-identical to transformers on both demo checkpoints, however requests are batched."""
from __future__ import annotations

import pytest

from engines.portable.sampling import SamplingParams
from tests.portable.conftest import prompt_of

KINDS = ["llama", "mistral"]
LENGTHS = [(3, 48), (10, 30), (60, 20), (17, 41), (33, 12), (5, 36), (48, 25), (24, 24)]


def greedy(max_new_tokens: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_single_request_crosses_the_sliding_window(kind, make_engine, hf_greedy):
    prompt = prompt_of(10, seed=1)
    engine = make_engine(kind)
    assert engine.generate([prompt], greedy(48)) == [hf_greedy(kind, prompt, 48)]


@pytest.mark.parametrize("kind", KINDS)
def test_eight_concurrent_requests_of_different_lengths(kind, make_engine, hf_greedy):
    prompts = [prompt_of(length, seed=i) for i, (length, _) in enumerate(LENGTHS)]
    engine = make_engine(kind)
    outputs = engine.generate(prompts, [greedy(new) for _, new in LENGTHS])
    for prompt, (_, new), output in zip(prompts, LENGTHS, outputs, strict=True):
        assert output == hf_greedy(kind, prompt, new)
    assert engine.num_free_blocks == engine.num_total_blocks


@pytest.mark.parametrize("kind", KINDS)
def test_preemption_when_kv_blocks_run_out(kind, make_engine, hf_greedy):
    prompts = [prompt_of(length, seed=10 + i) for i, (length, _) in enumerate(LENGTHS)]
    engine = make_engine(kind, num_kv_blocks=12, block_size=8)  # 96 slots for ~400 tokens of work
    outputs = engine.generate(prompts, [greedy(new) for _, new in LENGTHS])
    assert engine.scheduler.num_preemptions > 0
    for prompt, (_, new), output in zip(prompts, LENGTHS, outputs, strict=True):
        assert output == hf_greedy(kind, prompt, new)
    assert engine.num_free_blocks == engine.num_total_blocks


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_prefill_with_a_small_token_budget(kind, make_engine, hf_greedy):
    prompts = [prompt_of(length, seed=20 + i) for i, (length, _) in enumerate(LENGTHS[:4])]
    engine = make_engine(kind, max_num_batched_tokens=16, max_num_seqs=4)
    outputs = engine.generate(prompts, [greedy(new) for _, new in LENGTHS[:4]])
    for prompt, (_, new), output in zip(prompts, LENGTHS[:4], outputs, strict=True):
        assert output == hf_greedy(kind, prompt, new)


@pytest.mark.parametrize("kind", KINDS)
def test_prefix_cache_hits_give_the_same_tokens(kind, make_engine, hf_greedy):
    shared = prompt_of(40, seed=99)
    prompts = [shared + prompt_of(length, seed=30 + i)[1:] for i, length in enumerate([4, 9, 17])]
    engine = make_engine(kind, block_size=8)
    outputs = engine.generate(prompts[:1], greedy(16))
    assert engine.blocks.num_reused_tokens == 0
    outputs += engine.generate(prompts[1:], greedy(16))
    assert engine.blocks.num_reused_tokens == 2 * 40
    for prompt, output in zip(prompts, outputs, strict=True):
        assert output == hf_greedy(kind, prompt, 16)


def test_prefix_reuse_skips_the_shared_blocks(make_engine):
    shared = prompt_of(40, seed=7)
    engine = make_engine("llama", block_size=8)
    engine.generate([shared + [11, 12, 13]], greedy(4))
    engine.add_request("b", shared + [21, 22], greedy(4))
    engine._drain_inbox()
    seq = engine.groups["b"].live[0]
    assert engine.blocks.reuse_prefix(seq) == 40  # five full blocks of the shared 40 tokens
    engine.blocks.free_sequence(seq)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("length", [24, 73])
def test_a_prompt_alone_prefilled_in_chunks(kind, length, make_engine, hf_greedy):
    """Steps in which no sequence samples (only prefill chunks run) must still fill the KV cache."""
    prompt = prompt_of(length, seed=70 + length)
    engine = make_engine(kind, max_num_batched_tokens=16, block_size=8)
    assert engine.generate([prompt], greedy(10)) == [hf_greedy(kind, prompt, 10)]
