"""vLLM's /tokenize, /detokenize and /version against the real gateway."""
from __future__ import annotations

import httpx
import pytest


pytestmark = pytest.mark.e2e


def _post(stack, path: str, body: dict, key: bool = True) -> httpx.Response:
    headers = {"Authorization": f"Bearer {stack.api_key}"} if key else {}
    return httpx.post(f"{stack.base_url}{path}", json=body, headers=headers, timeout=60)


def test_tokenize_a_prompt(ingot_stack, tokenizer):
    text = "Hello 你好 😀"
    body = _post(ingot_stack, "/tokenize",
                 {"model": ingot_stack.model, "prompt": text, "return_token_strs": True}).json()
    assert body["tokens"] == tokenizer.encode(text) and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == 512 and len(body["token_strs"]) == body["count"]
    plain = _post(ingot_stack, "/tokenize", {"prompt": text, "add_special_tokens": False}).json()
    assert plain["tokens"] == tokenizer.encode(text)[1:]  # the demo tokenizer adds BOS


def test_tokenize_messages_counts_what_chat_sends(ingot_stack, tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    body = _post(ingot_stack, "/tokenize", {"messages": messages}).json()
    assert body["tokens"] == tokenizer.apply_chat_template(messages)


def test_detokenize_round_trips(ingot_stack, tokenizer):
    ids = tokenizer.encode("北京是中国的首都。")
    body = _post(ingot_stack, "/detokenize", {"model": ingot_stack.model, "tokens": ids}).json()
    assert body["prompt"] == tokenizer.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("path, body, param", [
    ("/detokenize", {"tokens": [10**9]}, "tokens"),
    ("/detokenize", {"tokens": "nope"}, "tokens"),
    ("/tokenize", {"prompt": 3}, "prompt"),
    ("/tokenize", {"model": "other", "prompt": "x"}, "model"),
])
def test_bad_bodies_are_openai_errors(ingot_stack, path, body, param):
    response = _post(ingot_stack, path, body)
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["param"] == param


def test_keys_apply_and_version_is_open(ingot_stack):
    assert _post(ingot_stack, "/tokenize", {"prompt": "x"}, key=False).status_code == 401
    assert _post(ingot_stack, "/detokenize", {"tokens": [1]}, key=False).status_code == 401
    version = httpx.get(f"{ingot_stack.base_url}/version", timeout=30)
    assert version.status_code == 200 and version.json()["version"]
