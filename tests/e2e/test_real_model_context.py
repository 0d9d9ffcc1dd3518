"""The served context of the real model: capped to what the engine's KV cache holds for one request, shown
by /v1/models, and followed by the gateway's default max_tokens (context minus prompt)."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.real_model_fixtures import REAL_MODEL_SETTINGS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]  # the model's first conversion on a cold machine

MODEL_POSITIONS = 8192  # SmolLM2-135M-Instruct's own context
# REAL_MODEL_SETTINGS' 128 MiB of KV cache at 46,080 bytes a token (30 layers x 3 KV heads x 64 x 2 x fp32),
# in whole 16-token blocks
SERVED = (REAL_MODEL_SETTINGS.kv_cache_memory_bytes // (46080 * 16)) * 16


@pytest.fixture(scope="module")
def client(real_model_stack):
    client = openai.OpenAI(base_url=f"{real_model_stack.base_url}/v1", api_key=real_model_stack.api_key,
                           timeout=600, max_retries=0)
    yield client
    client.close()


def test_models_show_the_served_context(real_model_stack, client):
    assert SERVED == 2912 < MODEL_POSITIONS
    manifest = json.loads((real_model_stack.artifact / "manifest.json").read_text())
    assert manifest["max_model_len"] == SERVED
    raw = httpx.get(f"{real_model_stack.base_url}/v1/models", timeout=60,
                    headers={"Authorization": f"Bearer {real_model_stack.api_key}"}).json()
    assert [card["max_model_len"] for card in raw["data"] if card["id"] == real_model_stack.model] == [SERVED]


def test_a_chat_without_max_tokens_answers(real_model_stack, client):
    answer = client.chat.completions.create(
        model=real_model_stack.model, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    choice = answer.choices[0]
    assert "Paris" in choice.message.content and choice.finish_reason == "stop"


def test_a_streamed_completion_without_max_tokens_answers(real_model_stack, client):
    stream = client.completions.create(model=real_model_stack.model, prompt="The capital of France is",
                                       temperature=0, stop=["."], stream=True)
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert "Paris" in text


def test_a_prompt_longer_than_the_served_context_is_a_clear_400(real_model_stack, client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=real_model_stack.model,
                                       messages=[{"role": "user", "content": "hello " * (SERVED + 10)}])
    error = caught.value.body
    assert error["code"] == "context_length_exceeded" and f"maximum context length is {SERVED} tokens" in \
        error["message"]


def test_max_tokens_beyond_the_served_context_is_a_clear_400(real_model_stack, client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=real_model_stack.model, max_tokens=SERVED,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.body["param"] == "max_tokens" and str(SERVED) in caught.value.body["message"]


def test_bfloat16_on_cpu_answers_like_float32(real_model):
    """The CPU default where the CPU has native bfloat16: same answer, log-probabilities within bfloat16's
    tolerance of float32's (the GPU fidelity run's: 0.35 nats at most)."""
    from benchmarks.fidelity import engine_logprobs
    from engines.portable.config import EngineConfig
    from engines.portable.engine import LLMEngine
    from engines.portable.sampling import SamplingParams
    from server.tokenizer import Tokenizer

    tokenizer = Tokenizer(real_model.artifact / "tokenizer")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    params = SamplingParams(max_new_tokens=16, temperature=0.0, end_id=tokenizer.eos_token_id)
    answers, logprobs = {}, {}
    for dtype in ("float32", "bfloat16"):
        config = EngineConfig(dtype=dtype, kv_cache_memory_bytes=16 << 20)
        engine = LLMEngine.from_checkpoint(real_model.checkpoint, config)
        answers[dtype] = engine.generate([prompt], params)[0]
        logprobs[dtype] = engine_logprobs(engine, prompt + answers["float32"])
    assert "Paris" in tokenizer.decode(answers["bfloat16"])
    assert max(abs(a - b) for a, b in zip(logprobs["float32"], logprobs["bfloat16"], strict=True)) < 0.35
