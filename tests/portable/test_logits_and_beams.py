"""Prompt and generation logits rows (prompt logprobs, top logprobs) and beam search, against transformers."""
from __future__ import annotations

import pytest
import torch

from engines.logprobs import token_logprobs, top_logprobs
from engines.portable.sampling import SamplingParams
from tests.portable.conftest import prompt_of

KINDS = ["llama", "mistral"]


def hf_logits(hf_models, kind: str, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_models[kind](torch.tensor([tokens])).logits[0].float()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("overrides", [{}, {"max_num_batched_tokens": 16, "block_size": 8}])
def test_context_logits_are_the_prompts_own(kind, overrides, make_engine, hf_models):
    prompt = prompt_of(41, seed=11)
    engine = make_engine(kind, **overrides)
    engine.generate([prompt], SamplingParams(max_new_tokens=2, temperature=0.0))  # cache the prefix
    params = SamplingParams(max_new_tokens=3, temperature=0.0, return_context_logits=True)
    [output] = engine.generate_outputs([prompt], params)
    expected = hf_logits(hf_models, kind, prompt)
    assert output.context_logits.shape == expected.shape
    torch.testing.assert_close(output.context_logits, expected, atol=2e-4, rtol=1e-4)
    logprobs = token_logprobs(output.context_logits.numpy(), prompt)
    reference = expected.log_softmax(-1)[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
    assert logprobs[0] is None
    assert logprobs[1:] == pytest.approx(reference.tolist(), abs=1e-4)


def test_generation_logits_give_the_raw_top_alternatives(make_engine, hf_models):
    prompt = prompt_of(9, seed=12)
    engine = make_engine("llama")
    params = SamplingParams(max_new_tokens=6, temperature=2.0, seed=3, return_logprobs=True,
                            return_generation_logits=True)
    [output] = engine.generate_outputs([prompt], params)
    choice = output.choices[0]
    rows = torch.cat(choice.logits)
    assert rows.shape == (6, engine.model_config.vocab_size)
    expected = hf_logits(hf_models, "llama", prompt + choice.token_ids)[len(prompt) - 1:-1]
    torch.testing.assert_close(rows, expected, atol=2e-4, rtol=1e-4)
    for row, token, logprob in zip(rows.numpy(), choice.token_ids, choice.logprobs, strict=True):
        top = top_logprobs(row, 5)
        assert [t for t, _ in top] == expected.new_tensor(row).topk(5).indices.tolist()
        assert top[0][1] >= logprob - 1e-5  # the most likely token, not the sampled one
        assert token_logprobs(row[None], [0, token])[1] == pytest.approx(logprob, abs=1e-4)


def hf_beams(hf_models, kind, prompt, max_new_tokens, **kwargs) -> list[list[int]]:
    num_return = kwargs.pop("num_return_sequences", 1)
    with torch.no_grad():
        out = hf_models[kind].generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=0, num_return_sequences=num_return, **kwargs)
    eos = kwargs.get("eos_token_id")
    results = []
    for row in out[:, len(prompt):].tolist():
        if eos is not None and eos in row:
            row = row[:row.index(eos)]
        results.append([t for t in row if t != 0] if eos is not None else row)
    return results


def beam_params(width: int, max_new_tokens: int, **extra) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, beam_width=width, **extra)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("width", [2, 4])
def test_beam_search_equals_transformers(kind, width, make_engine, hf_models):
    prompt = prompt_of(12, seed=20 + width)
    engine = make_engine(kind, block_size=8)
    [output] = engine.generate_outputs([prompt], beam_params(width, 14, n=width))
    expected = hf_beams(hf_models, kind, prompt, 14, num_beams=width, num_return_sequences=width, eos_token_id=None)
    assert [c.token_ids for c in output.choices] == expected
    assert engine.num_free_blocks == engine.num_total_blocks


def _frequent_token(engine, prompt) -> int:
    """A token the model produces often after `prompt`: as an end id it makes beams finish early."""
    tokens = engine.generate([prompt], SamplingParams(max_new_tokens=24, temperature=0.0))[0]
    return max(set(tokens), key=tokens.count)


@pytest.mark.parametrize("length_penalty,early_stopping", [(1.0, False), (0.0, False), (2.0, True), (-1.0, False)])
def test_beam_search_with_an_end_id_equals_transformers(length_penalty, early_stopping, make_engine, hf_models):
    prompt = prompt_of(10, seed=31)
    engine = make_engine("llama", block_size=8)
    eos = _frequent_token(engine, prompt)
    params = beam_params(3, 20, n=3, end_id=eos, length_penalty=length_penalty, early_stopping=early_stopping)
    [output] = engine.generate_outputs([prompt], params)
    expected = hf_beams(hf_models, "llama", prompt, 20, num_beams=3, num_return_sequences=3, eos_token_id=eos,
                        length_penalty=length_penalty, early_stopping=early_stopping)
    assert [c.token_ids for c in output.choices] == expected
    if length_penalty <= 0:  # short hypotheses are not penalised: one that ends on the end id wins a slot
        assert any(c.finish_reason == "stop" for c in output.choices)
    assert engine.num_free_blocks == engine.num_total_blocks


def test_beam_search_survives_preemption(make_engine, hf_models):
    prompt = prompt_of(14, seed=41)
    engine = make_engine("mistral", block_size=4, num_kv_blocks=14)
    others = [prompt_of(20, seed=s) for s in range(3)]
    outputs = engine.generate_outputs([prompt, *others], [beam_params(3, 16)] +
                                      [SamplingParams(max_new_tokens=16, temperature=0.0)] * 3)
    assert engine.scheduler.num_preemptions > 0
    assert outputs[0].choices[0].token_ids == hf_beams(hf_models, "mistral", prompt, 16, num_beams=3,
                                                       eos_token_id=None)[0]
    assert engine.num_free_blocks == engine.num_total_blocks
