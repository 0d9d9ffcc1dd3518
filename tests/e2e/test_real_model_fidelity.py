"""Fidelity on real weights: SmolLM2-135M-Instruct served by the portable engine (CPU, float32) against
transformers loaded from the same GGUF file (`gguf_file=`), the reference.

Checked: the converted weights are transformers' weights; the chat template renders the same token ids;
greedy decoding is token-identical on every chat (the engine in-process, all chats batched together);
per-token log-probabilities and the perplexity of a shipped text agree within 1e-4.
"""
from __future__ import annotations

import asyncio
import math

import openai
import pytest
import torch

from benchmarks.fidelity import CHATS, TEXT, engine_logprobs, reference_logprobs
from engines.portable.config import EngineConfig
from engines.portable.engine import LLMEngine
from engines.portable.sampling import SamplingParams
from server.tokenizer import Tokenizer

# The reference reads the 98 MB GGUF with the gguf package's pure-Python reader (twice: model and
# tokenizer), which on a busy 2-core machine alone can pass the suite's default 600 s per test.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

MAX_NEW_TOKENS = 24
TOLERANCE = 1e-4
CONCURRENT = [0, 2, 8, 11, 12, 16, 19, 21]  # English, Chinese, code, emoji and the long chat at once


@pytest.fixture(scope="module")
def reference(real_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(real_model.gguf.parent), real_model.gguf.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=name)


@pytest.fixture(scope="module")
def tokenizer(real_model_artifact):
    return Tokenizer(real_model_artifact / "tokenizer")


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer.apply_chat_template(chat) for chat in CHATS]


@pytest.fixture(scope="module")
def reference_outputs(reference, prompts, tokenizer):
    """transformers' greedy continuation of every chat (ending at <|im_end|> or MAX_NEW_TOKENS)."""
    model, _ = reference
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            out = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
            outputs.append(out[0, len(prompt):].tolist())
    return outputs


@pytest.fixture(scope="module")
def engine(real_model):
    return LLMEngine.from_checkpoint(real_model.checkpoint, EngineConfig(dtype="float32", max_num_batched_tokens=4096))


def strip_eos(ids: list[int], eos: int) -> list[int]:
    return ids[:-1] if ids and ids[-1] == eos else ids


def test_the_converted_weights_are_transformers_weights(real_model, reference):
    from safetensors.torch import load_file

    ours = load_file(str(real_model.checkpoint / "model.safetensors"))
    theirs = reference[0].state_dict()
    assert len(ours) == 272
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name


def test_chat_template_renders_like_transformers(reference, tokenizer, prompts):
    _, reference_tokenizer = reference
    for chat, prompt in zip(CHATS, prompts, strict=True):
        text = reference_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert prompt == reference_tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(prompt, skip_special_tokens=False) == text
    assert tokenizer.decode(prompts[0], skip_special_tokens=False).endswith("<|im_start|>assistant\n")


def test_greedy_is_token_identical_on_every_chat(engine, prompts, reference_outputs, tokenizer):
    assert len(CHATS) >= 20
    eos = tokenizer.eos_token_id
    params = SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, end_id=eos)
    outputs = engine.generate(prompts, params)  # all chats batched together
    for chat, output, expected in zip(CHATS, outputs, reference_outputs, strict=True):
        assert strip_eos(output, eos) == strip_eos(expected, eos), chat[-1]["content"]
    assert "Paris" in tokenizer.decode(outputs[0])
    assert engine.num_free_blocks == engine.num_total_blocks


def test_logprobs_of_the_answers_match(engine, reference, prompts, reference_outputs):
    model, _ = reference
    worst = 0.0
    pairs = list(zip(prompts, reference_outputs, strict=True))
    for prompt, answer in pairs[:6] + pairs[-1:]:  # six short chats and the long one
        ids = prompt + answer
        ours = engine_logprobs(engine, ids)[len(prompt) - 1:]
        theirs = reference_logprobs(model, ids, len(prompt))
        worst = max(worst, max(abs(a - b) for a, b in zip(ours, theirs, strict=True)))
    assert worst < TOLERANCE


def test_perplexity_of_a_shipped_text_matches(engine, reference, tokenizer):
    model, _ = reference
    ids = tokenizer.encode(TEXT.read_text())
    assert len(ids) > 200
    ours = math.exp(-sum(engine_logprobs(engine, ids)) / (len(ids) - 1))
    theirs = math.exp(-sum(reference_logprobs(model, ids, 1)) / (len(ids) - 1))
    assert 1.5 < theirs < 100  # a real model on English prose, not noise
    assert abs(ours - theirs) < TOLERANCE * theirs


async def test_eight_concurrent_chats_through_the_whole_stack(real_model_stack, reference, prompts,
                                                             reference_outputs, tokenizer):
    model, _ = reference
    client = openai.AsyncOpenAI(base_url=f"{real_model_stack.base_url}/v1", api_key=real_model_stack.api_key,
                                max_retries=0, timeout=300)

    async def ask(index: int):
        return await client.chat.completions.create(
            model=real_model_stack.model, messages=CHATS[index], max_tokens=MAX_NEW_TOKENS, temperature=0,
            logprobs=True)

    try:
        replies = await asyncio.gather(*(ask(index) for index in CONCURRENT))
    finally:
        await client.close()
    eos = tokenizer.eos_token_id
    for index, reply in zip(CONCURRENT, replies, strict=True):
        expected = strip_eos(reference_outputs[index], eos)
        choice = reply.choices[0]
        assert choice.message.content == tokenizer.decode(expected), CHATS[index][-1]["content"]
        assert reply.usage.completion_tokens == len(expected)  # the gateway does not count <|im_end|>
        assert reply.usage.prompt_tokens == len(prompts[index])
        served = [entry.logprob for entry in choice.logprobs.content]
        theirs = reference_logprobs(model, prompts[index] + expected, len(prompts[index]))
        assert len(served) == len(theirs)
        assert max(abs(a - b) for a, b in zip(served, theirs, strict=True)) < TOLERANCE
    assert "Paris" in replies[0].choices[0].message.content
