"""Bad input gets OpenAI-shaped errors with the right status; disconnects and dead engines are handled."""
from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.conftest import start_gateway

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def http(ingot_stack):
    with httpx.Client(base_url=ingot_stack.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {ingot_stack.api_key}"}) as client:
        yield client


def assert_error(response: httpx.Response, status: int, param: str | None = None, code: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def chat(model: str, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}


def test_missing_and_wrong_key_are_401(ingot_stack):
    url = f"{ingot_stack.base_url}/v1/chat/completions"
    missing = httpx.post(url, json=chat(ingot_stack.model))
    assert_error(missing, 401, code="missing_api_key")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(url, json=chat(ingot_stack.model), headers={"Authorization": "Bearer sk-wrong"})
    assert_error(wrong, 401, code="invalid_api_key")
    assert_error(httpx.get(f"{ingot_stack.base_url}/v1/models"), 401)


def test_health_routes_are_open(ingot_stack):
    assert httpx.get(f"{ingot_stack.base_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{ingot_stack.base_url}/ready").status_code == 200


def test_malformed_json_is_400(http):
    response = http.post("/v1/chat/completions", content=b'{"model": "x", "messages": [',
                         headers={"Content-Type": "application/json"})
    assert "JSON" in assert_error(response, 400)["message"]


def test_unknown_model_is_404(http):
    assert_error(http.post("/v1/chat/completions", json=chat("no-such-model")), 404, "model", "model_not_found")
    assert_error(http.get("/v1/models/no-such-model"), 404, "model", "model_not_found")


def test_prompt_too_long_is_400(http, ingot_stack):
    prompt = " ".join(["hello"] * 2000)
    response = http.post("/v1/completions", json={"model": ingot_stack.model, "prompt": prompt})
    error = assert_error(response, 400, "prompt", "context_length_exceeded")
    assert re.search(r"maximum context length is 512 tokens", error["message"])


@pytest.mark.parametrize("field,value,param", [
    ("max_tokens", -1, "max_tokens"), ("max_tokens", 0, "max_tokens"), ("temperature", 2.5, "temperature"),
    ("temperature", -0.1, "temperature"), ("top_p", 0, "top_p"), ("presence_penalty", 3, "presence_penalty"),
    ("n", 17, "n"), ("stop", [""], "stop"),
])
def test_out_of_range_fields_are_400(http, ingot_stack, field, value, param):
    assert_error(http.post("/v1/chat/completions", json=chat(ingot_stack.model, **{field: value})), 400, param)


def test_empty_messages_and_token_ids_out_of_vocab_are_400(http, ingot_stack):
    assert_error(http.post("/v1/chat/completions", json={"model": ingot_stack.model, "messages": []}), 400,
                 "messages")
    response = http.post("/v1/completions", json={"model": ingot_stack.model, "prompt": [1, 2, 10**6]})
    assert_error(response, 400, "prompt")


def engine_metric(ingot_stack, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{ingot_stack.triton.metrics_port}/metrics").text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]
    assert values, f"{name} not exported by Triton"
    return sum(values)


# A client that leaves cancels its engine request: tests/e2e/test_disconnect.py (a generation long enough that
# the engine's periodic gauge always sees it running; 400 tokens of the demo model can end before it does).


def test_unreachable_triton_is_503_not_a_hang(ingot_stack, tmp_path):
    process, base_url = start_gateway(ingot_stack.artifact, "127.0.0.1:9", tmp_path / "gateway.log")
    try:
        headers = {"Authorization": f"Bearer {ingot_stack.api_key}"}
        started = time.monotonic()
        response = httpx.post(f"{base_url}/v1/chat/completions", json=chat(ingot_stack.model), headers=headers,
                              timeout=30)
        assert_error(response, 503, code="engine_unavailable")
        stream = httpx.post(f"{base_url}/v1/completions", headers=headers, timeout=30,
                            json={"model": ingot_stack.model, "prompt": "hi", "stream": True})
        assert_error(stream, 503)
        assert time.monotonic() - started < 20
        assert_error(httpx.get(f"{base_url}/ready"), 503)
    finally:
        process.terminate()
        process.wait(timeout=15)
