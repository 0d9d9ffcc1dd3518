"""The portable model with several response sender threads (response_sender_threads): each request is
answered by one of them, so concurrent streams still get exactly their own greedy tokens, in order, and
every stream ends once."""
from __future__ import annotations

import asyncio
import dataclasses
import subprocess

import openai
import pytest

from engines.targets.portable import build_portable
from server.tokenizer import Tokenizer
from tests.conftest import TEST_API_KEY, TEST_SETTINGS, start_gateway

pytestmark = pytest.mark.e2e

PROMPTS = ["Hello", "The quick brown fox", "你好，世界！", "def fibonacci(n):", "Paged attention stores",
           "Emoji 😀 🚀", "Numbers: 1 2 3", "A journey of a thousand miles", "北京是中国的首都。", "café naïve",
           "Continuous batching lets", "x", "{\"model\": \"demo\"", "今天天气很好", "Ingot serves models", "Why"]


@pytest.fixture(scope="module")
def stack(demo_checkpoints, triton_server_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("sender-threads")
    settings = dataclasses.replace(TEST_SETTINGS, response_sender_threads=3)
    build_portable(demo_checkpoints["llama"], root / "demo-llama", settings, model_name="demo-llama")
    triton = triton_server_factory(root / "demo-llama" / "model_repository")
    process, base_url = start_gateway(root / "demo-llama", triton.grpc_url, root / "gateway.log")
    yield base_url, Tokenizer(root / "demo-llama" / "tokenizer")
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


async def test_sixteen_streams_over_three_sender_threads_each_get_their_own_tokens(stack, reference_greedy):
    base_url, tokenizer = stack
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=TEST_API_KEY, max_retries=0)

    async def stream(prompt: str) -> tuple[str, int, int]:
        response = await client.completions.create(model="demo-llama", prompt=prompt, max_tokens=14, temperature=0,
                                                   stream=True, stream_options={"include_usage": True})
        text, usage, finishes = [], None, 0
        async for chunk in response:
            text.extend(choice.text for choice in chunk.choices)
            finishes += sum(1 for choice in chunk.choices if choice.finish_reason)
            usage = chunk.usage or usage
        return "".join(text), usage.completion_tokens, finishes

    results = await asyncio.gather(*(stream(prompt) for prompt in PROMPTS))
    for prompt, (text, completion_tokens, finishes) in zip(PROMPTS, results, strict=True):
        expected = reference_greedy(tokenizer.encode(prompt), 14)
        assert text == tokenizer.decode(expected), prompt
        assert completion_tokens == len(expected) and finishes == 1, prompt
