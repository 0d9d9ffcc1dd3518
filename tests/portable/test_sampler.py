"""Sampling rules, each checked on numbers or against transformers."""
from __future__ import annotations

import pytest
import torch

from engines.portable.sampler import apply_penalties, apply_top_k_top_p, sample
from engines.portable.sampling import SamplingParams
from engines.portable.sequence import Sequence
from tests.portable.conftest import prompt_of


def seq(tokens: list[int], prompt_len: int, **params) -> Sequence:
    return Sequence("r", list(tokens), prompt_len, SamplingParams(max_new_tokens=8, **params))


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -2.0, 1.0, 3.0]])
    out = apply_penalties(logits, [seq([0, 1], 1, repetition_penalty=2.0)])
    assert out.tolist() == [[1.0, -4.0, 1.0, 3.0]]


def test_presence_and_frequency_penalties_count_output_tokens_only():
    logits = torch.zeros(1, 4)
    out = apply_penalties(logits, [seq([3, 1, 1, 2], 1, presence_penalty=0.5, frequency_penalty=0.25)])
    # token 3 is in the prompt only; token 1 twice in the output; token 2 once
    assert out.tolist() == [[0.0, -(0.5 + 2 * 0.25), -(0.5 + 0.25), 0.0]]


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept_k = apply_top_k_top_p(logits, torch.tensor([2]), torch.tensor([1.0]))
    assert torch.isfinite(kept_k).tolist() == [[True, True, False, False]]
    kept_p = apply_top_k_top_p(logits, torch.tensor([0]), torch.tensor([0.7]))
    assert torch.isfinite(kept_p).tolist() == [[True, True, False, False]]
    kept_tiny = apply_top_k_top_p(logits, torch.tensor([0]), torch.tensor([0.01]))
    assert torch.isfinite(kept_tiny).tolist() == [[True, False, False, False]]


def test_min_length_masks_end_id():
    logits = torch.tensor([[0.0, 5.0, 1.0]])
    tokens, _ = sample(logits.clone(), [seq([0], 1, temperature=0.0, end_id=1, min_length=2)])
    assert tokens == [2]
    tokens, _ = sample(logits.clone(), [seq([0, 2, 2], 1, temperature=0.0, end_id=1, min_length=2)])
    assert tokens == [1]


def test_seeded_sampling_does_not_depend_on_the_batch(make_engine):
    engine = make_engine("llama")
    prompt = prompt_of(12, seed=3)
    seeded = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.95, seed=42)
    alone = engine.generate([prompt], seeded)[0]
    others = [prompt_of(n, seed=n) for n in (5, 30, 9)]
    crowd = engine.generate(others + [prompt] + others,
                            [SamplingParams(max_new_tokens=20, temperature=1.3)] * 3 + [seeded]
                            + [SamplingParams(max_new_tokens=20, temperature=0.8, seed=7)] * 3)[3]
    assert alone == crowd
    different = engine.generate([prompt], SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.95, seed=43))
    assert different[0] != alone


def test_top_k_one_and_tiny_top_p_are_greedy(make_engine):
    engine = make_engine("mistral")
    prompt = prompt_of(9, seed=5)
    greedy = engine.generate([prompt], SamplingParams(max_new_tokens=16, temperature=0.0))[0]
    assert engine.generate([prompt], SamplingParams(max_new_tokens=16, top_k=1, temperature=1.5))[0] == greedy
    nucleus = SamplingParams(max_new_tokens=16, top_p=1e-6, temperature=1.0, seed=1)
    assert engine.generate([prompt], nucleus)[0] == greedy


def test_end_id_stops_and_is_excluded_stop_sequences_are_included(make_engine):
    engine = make_engine("llama")
    prompt = prompt_of(8, seed=11)
    free = engine.generate([prompt], SamplingParams(max_new_tokens=12, temperature=0.0))[0]
    end_id = free[5]
    first = free.index(end_id)
    engine.add_request("e", prompt, SamplingParams(max_new_tokens=12, temperature=0.0, end_id=end_id))
    outputs = []
    while engine.has_unfinished():
        outputs += engine.step()
    assert [t for o in outputs for t in o.new_token_ids] == free[:first]
    assert outputs[-1].finished and outputs[-1].finish_reason == "stop"
    stop = free[3:5]
    stopped = engine.generate([prompt], SamplingParams(max_new_tokens=12, temperature=0.0,
                                                       stop_token_sequences=[stop]))[0]
    assert stopped == free[:5]


def test_length_finish_and_logprobs_match_transformers(make_engine, hf_models):
    engine = make_engine("mistral")
    prompt = prompt_of(7, seed=2)
    engine.add_request("l", prompt, SamplingParams(max_new_tokens=6, temperature=0.0, return_logprobs=True))
    outputs = []
    while engine.has_unfinished():
        outputs += engine.step()
    tokens = [t for o in outputs for t in o.new_token_ids]
    logprobs = [lp for o in outputs for lp in o.new_logprobs]
    assert outputs[-1].finish_reason == "length" and len(tokens) == 6
    with torch.no_grad():
        logits = hf_models["mistral"](torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1]
    expected = logits.log_softmax(-1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]
    assert logprobs == pytest.approx(expected.tolist(), abs=1e-4)


def test_min_length_holds_back_the_token_that_would_complete_a_stop_sequence():
    logits = torch.tensor([[0.0, 5.0, 1.0, 0.5]])
    stop = dict(temperature=0.0, stop_token_sequences=[[2, 1]], min_length=4)
    tokens, _ = sample(logits.clone(), [seq([0, 3, 2], 1, **stop)])  # output [3, 2]: 1 would stop at 3 tokens
    assert tokens == [2]
    tokens, _ = sample(logits.clone(), [seq([0, 3, 3, 2], 1, **stop)])  # output [3, 3, 2]: stopping gives 4
    assert tokens == [1]
    tokens, _ = sample(logits.clone(), [seq([0, 3, 3], 1, **stop)])  # 1 completes nothing here
    assert tokens == [1]


def test_from_request_maps_the_contract():
    from engines.contract import GenerationRequest

    request = GenerationRequest(input_ids=[1, 2], request_output_len=9, end_id=2, temperature=0.7, top_k=5,
                                top_p=0.9, random_seed=2**64 - 1, repetition_penalty=1.1, presence_penalty=0.2,
                                frequency_penalty=0.3, min_length=3, stop_words=[[5, 6], [7]],
                                return_log_probs=True)
    assert SamplingParams.from_request(request) == SamplingParams(
        max_new_tokens=9, temperature=0.7, top_k=5, top_p=0.9, seed=2**64 - 1, repetition_penalty=1.1,
        presence_penalty=0.2, frequency_penalty=0.3, min_length=3, end_id=2, stop_token_sequences=[[5, 6], [7]],
        return_logprobs=True)


def test_the_largest_uint64_seed_is_accepted(make_engine):
    engine = make_engine("llama")
    params = SamplingParams(max_new_tokens=5, temperature=1.0, seed=2**64 - 1)
    assert engine.generate([[1, 5, 9]], params) == engine.generate([[1, 5, 9]], params)
