"""The official openai client against real Triton + gateway on loopback (portable engine, demo Llama)."""
from __future__ import annotations

import asyncio

import openai
import pytest


pytestmark = pytest.mark.e2e

PROMPTS = [
    "Hello", "The quick brown fox", "你好，世界！", "def fibonacci(n):", "Paged attention stores",
    "Emoji 😀 🚀", "Numbers: 1 2 3", "A journey of a thousand miles", "北京是中国的首都。", "café naïve",
    "Continuous batching lets", "Mistral uses grouped-query attention and a sliding window; Llama uses",
    "{\"model\": \"demo\"", "Ingot serves language models behind the OpenAI API.", "x", "今天天气很好",
]


@pytest.fixture()
def async_client(ingot_stack):
    return openai.AsyncOpenAI(base_url=f"{ingot_stack.base_url}/v1", api_key=ingot_stack.api_key, max_retries=0)


def test_models_lists_the_served_model(client, ingot_stack):
    assert [m.id for m in client.models.list().data] == [ingot_stack.model]
    assert client.models.retrieve(ingot_stack.model).id == ingot_stack.model


def test_chat_completion_matches_transformers_greedy(client, ingot_stack, tokenizer, reference_greedy):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello! 你好"}]
    reply = client.chat.completions.create(model=ingot_stack.model, messages=messages, max_tokens=20, temperature=0)
    prompt_ids = tokenizer.apply_chat_template(messages)
    expected = reference_greedy(prompt_ids, 20)
    assert reply.choices[0].message.content == tokenizer.decode(expected)
    assert reply.usage.prompt_tokens == len(prompt_ids)
    assert reply.usage.completion_tokens == len(expected)
    assert reply.usage.total_tokens == len(prompt_ids) + len(expected)
    assert reply.choices[0].finish_reason == ("length" if len(expected) == 20 else "stop")


def test_max_tokens_gives_length_and_exact_usage(client, ingot_stack):
    reply = client.completions.create(model=ingot_stack.model, prompt="The quick brown fox", max_tokens=7,
                                      temperature=0, extra_body={"ignore_eos": True})
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 7


def test_stop_string_cuts_text_and_finishes_with_stop(client, ingot_stack):
    full = client.completions.create(model=ingot_stack.model, prompt="Hello", max_tokens=24, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert stop.strip(), "the reference text needs visible characters in its middle"
    cut = client.completions.create(model=ingot_stack.model, prompt="Hello", max_tokens=24, temperature=0,
                                    stop=[stop], extra_body={"ignore_eos": True})
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_streaming_chat_with_usage(client, ingot_stack, tokenizer, reference_greedy):
    messages = [{"role": "user", "content": "Tell me about 北京 🚀"}]
    stream = client.chat.completions.create(model=ingot_stack.model, messages=messages, max_tokens=16,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    expected = reference_greedy(tokenizer.apply_chat_template(messages), 16)
    assert text == tokenizer.decode(expected)
    assert len(finish) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == len(expected) and chunks[-1].choices == []


def test_seeded_sampling_is_reproducible(client, ingot_stack):
    def sample(seed):
        return client.completions.create(model=ingot_stack.model, prompt="Once", max_tokens=12, temperature=1.0,
                                          top_p=0.9, seed=seed, extra_body={"ignore_eos": True}).choices[0].text

    assert sample(1234) == sample(1234)


def test_logprobs_equal_transformers_log_softmax(client, ingot_stack, tokenizer, reference_logprobs):
    messages = [{"role": "user", "content": "Hi"}]
    reply = client.chat.completions.create(model=ingot_stack.model, messages=messages, max_tokens=5,
                                           temperature=0, logprobs=True, extra_body={"ignore_eos": True})
    content = reply.choices[0].logprobs.content
    prompt_ids = tokenizer.apply_chat_template(messages)
    new_ids = tokenizer.encode(reply.choices[0].message.content)[1:]
    expected = reference_logprobs(prompt_ids, new_ids)
    assert len(content) == 5
    if len(new_ids) == 5:  # the text re-encodes to the same ids (true unless merges differ)
        assert [item.logprob for item in content] == pytest.approx(expected, abs=1e-3)
    assert all(item.logprob <= 0.0 for item in content)


def test_echo_returns_prompt_text(client, ingot_stack):
    reply = client.completions.create(model=ingot_stack.model, prompt="你好，世界！", max_tokens=3, echo=True,
                                      temperature=0, extra_body={"ignore_eos": True})
    assert reply.choices[0].text.startswith("你好，世界！")


async def test_sixteen_concurrent_streams_each_get_their_own_tokens(async_client, ingot_stack, tokenizer,
                                                                   reference_greedy):
    async def stream(prompt: str) -> tuple[str, int]:
        response = await async_client.completions.create(
            model=ingot_stack.model, prompt=prompt, max_tokens=14, temperature=0, stream=True,
            stream_options={"include_usage": True})
        text, usage = [], None
        async for chunk in response:
            text.extend(choice.text for choice in chunk.choices)
            usage = chunk.usage or usage
        return "".join(text), usage.completion_tokens

    results = await asyncio.gather(*(stream(prompt) for prompt in PROMPTS))
    for prompt, (text, completion_tokens) in zip(PROMPTS, results, strict=True):
        expected = reference_greedy(tokenizer.encode(prompt), 14)
        assert text == tokenizer.decode(expected), prompt
        assert completion_tokens == len(expected), prompt
