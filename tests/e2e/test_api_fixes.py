"""OpenAI and vLLM behaviours that were silently wrong, each checked on the real stack."""
from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(ingot_stack):
    return openai.OpenAI(base_url=f"{ingot_stack.base_url}/v1", api_key=ingot_stack.api_key, max_retries=0)


def test_max_tokens_beyond_the_context_is_a_400_with_the_numbers(client, ingot_stack):
    # The demo model holds 512 tokens; OpenAI and vLLM refuse rather than cap silently.
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=ingot_stack.model, prompt="Hello", max_tokens=600)
    error = caught.value.body
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    assert "512" in error["message"] and "600" in error["message"]
    with pytest.raises(openai.BadRequestError, match="maximum context length is 512"):
        client.chat.completions.create(model=ingot_stack.model, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=510)


def test_max_tokens_that_fit_exactly_are_accepted(client, ingot_stack):
    prompt_tokens = client.completions.create(model=ingot_stack.model, prompt="Hello", max_tokens=1).usage.prompt_tokens
    reply = client.completions.create(model=ingot_stack.model, prompt="Hello", max_tokens=512 - prompt_tokens,
                                      temperature=0, stop=["e"])
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_model_aliases_are_served(ingot_stack):
    response = httpx.post(f"{ingot_stack.base_url}/tokenize", json={"model": "tgi", "prompt": "Hello"},
                          headers={"Authorization": f"Bearer {ingot_stack.api_key}"}, timeout=60)
    assert response.status_code == 200
