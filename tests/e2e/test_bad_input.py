"""Input the gateway cannot serve is a 400 naming the field, never a 5xx or a silent change of meaning;
503s say what to do, not what is inside (no gRPC text, no Triton address)."""
from __future__ import annotations

import re

import httpx
import openai
import pytest

from engines.triton.launcher import free_port
from tests.conftest import start_gateway
from tests.e2e.test_errors_and_cancellation import assert_error

pytestmark = pytest.mark.e2e

INT32_MAX = 2**31 - 1


@pytest.fixture(scope="module")
def http(ingot_stack):
    with httpx.Client(base_url=ingot_stack.base_url, timeout=60,
                      headers={"Authorization": f"Bearer {ingot_stack.api_key}",
                               "Content-Type": "application/json"}) as client:
        yield client


def raw_chat(model: str, content: str = "hi", extra: str = "") -> bytes:
    """A chat body written by hand, so that JSON escapes reach the server exactly as written."""
    return ('{"model": "%s", "messages": [{"role": "user", "content": "%s"}]%s}' % (model, content, extra)).encode()


@pytest.mark.parametrize("route,body,param", [
    ("/v1/chat/completions", raw_chat("{m}", content=r"hello \ud800"), "messages.0.content"),
    ("/v1/chat/completions", raw_chat(r"demo-\ud800"), "model"),
    ("/v1/chat/completions", raw_chat("{m}", extra=r', "stop": ["ok", "\udfff"]'), "stop.1"),
    ("/v1/chat/completions", raw_chat("{m}", extra=r', "user": "\ud83d"'), "user"),
    ("/v1/chat/completions", b'{"model": "{m}", "messages": [{"role": "user", "name": "\\udc00x", "content": "a"}]}',
     "messages.0.name"),
    ("/v1/chat/completions",
     b'{"model": "{m}", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}',
     "messages.0.content.0.text"),
    ("/v1/completions", b'{"model": "{m}", "prompt": "\\ud800"}', "prompt"),
    ("/v1/completions", b'{"model": "{m}", "prompt": ["fine", "\\udbff tail"]}', "prompt.1"),
    ("/v1/completions", b'{"model": "{m}", "prompt": "a", "suffix": "\\ud800"}', "suffix"),
    # CESU-8 bytes of U+D800: Python's json module decodes them to the same lone surrogate
    ("/v1/completions", b'{"model": "{m}", "prompt": "\xed\xa0\x80"}', "prompt"),
])
def test_lone_surrogates_are_400_naming_the_field(http, ingot_stack, route, body, param):
    response = http.post(route, content=body.replace(b"{m}", ingot_stack.model.encode()))
    error = assert_error(response, 400, param)
    assert "surrogate" in error["message"]


def test_surrogate_pairs_are_text_and_served(http, ingot_stack):
    body = raw_chat(ingot_stack.model, content=r"emoji \ud83d\ude00", extra=', "max_tokens": 2')
    assert http.post("/v1/chat/completions", content=body).status_code == 200


@pytest.mark.parametrize("field,value", [
    ("top_k", 2**32 + 1), ("top_k", 2**63), ("top_k", 2**64 + 5), ("top_k", INT32_MAX + 1),
    ("max_tokens", 2**32 + 1), ("max_tokens", 2**63), ("min_tokens", 2**32 + 1), ("seed", 2**64),
    ("seed", -1), ("repetition_penalty", 1e39),
])
def test_integers_beyond_the_contract_dtypes_are_400_not_a_wrap(http, ingot_stack, field, value):
    body = {"model": ingot_stack.model, "prompt": "Hello", "max_tokens": 2, field: value}
    assert_error(http.post("/v1/completions", json=body), 400, field)


def test_non_finite_floats_are_400(http, ingot_stack):
    for field in ("repetition_penalty", "temperature", "top_p", "presence_penalty"):
        for literal in ("NaN", "Infinity", "-Infinity"):
            body = b'{"model": "%s", "prompt": "a", "%s": %s}' % (ingot_stack.model.encode(), field.encode(),
                                                                   literal.encode())
            assert_error(http.post("/v1/completions", content=body), 400, field)


def test_the_largest_int32_top_k_is_served(http, ingot_stack):
    body = {"model": ingot_stack.model, "prompt": "Hello", "max_tokens": 2, "top_k": INT32_MAX}
    assert http.post("/v1/completions", json=body).status_code == 200


def test_the_openai_client_gets_a_bad_request_error_naming_top_k(ingot_stack):
    client = openai.OpenAI(base_url=f"{ingot_stack.base_url}/v1", api_key=ingot_stack.api_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=ingot_stack.model, prompt="Hello", max_tokens=2,
                                  extra_body={"top_k": 2**32 + 1})
    assert caught.value.param == "top_k"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=ingot_stack.model, max_tokens=2, seed=2**64,
                                       messages=[{"role": "user", "content": "hi"}])
    assert caught.value.param == "seed"


@pytest.fixture(scope="module")
def gateway_without_triton(ingot_stack, tmp_path_factory):
    """A real gateway whose Triton address has nothing listening."""
    triton_url = f"127.0.0.1:{free_port()}"
    process, base_url = start_gateway(ingot_stack.artifact, triton_url, tmp_path_factory.mktemp("gw") / "gw.log")
    yield base_url, triton_url
    process.terminate()
    process.wait(timeout=15)


def assert_no_internals(response: httpx.Response, triton_url: str) -> None:
    text = response.text
    host, port = triton_url.rsplit(":", 1)
    for leak in (triton_url, port, "StatusCode", "grpc", "AioRpcError", "ipv4", "Triton"):
        assert leak not in text, f"{leak!r} shown to the client: {text}"


def test_503_bodies_show_no_internals_and_say_when_to_retry(gateway_without_triton, ingot_stack):
    base_url, triton_url = gateway_without_triton
    headers = {"Authorization": f"Bearer {ingot_stack.api_key}"}
    for body in ({"model": ingot_stack.model, "prompt": "hi"},
                 {"model": ingot_stack.model, "prompt": "hi", "stream": True}):
        response = httpx.post(f"{base_url}/v1/completions", json=body, headers=headers, timeout=60)
        assert_error(response, 503, code="engine_unavailable")
        assert int(response.headers["retry-after"]) > 0
        assert_no_internals(response, triton_url)


def test_ready_is_503_without_the_engine_address_and_health_stays_200(gateway_without_triton):
    base_url, triton_url = gateway_without_triton
    ready = httpx.get(f"{base_url}/ready", timeout=30)
    assert_error(ready, 503)
    assert int(ready.headers["retry-after"]) > 0
    assert_no_internals(ready, triton_url)
    assert httpx.get(f"{base_url}/health", timeout=30).json() == {"status": "ok"}


def test_metrics_labels_stay_bounded_for_junk_paths(ingot_stack, http):
    for index in range(20):
        httpx.get(f"{ingot_stack.base_url}/v1/junk-{index}", timeout=30)  # unauthenticated: a 401
        http.post(f"/v1/junk-{index}/completions", json={})  # authenticated: a 404
        httpx.get(f"{ingot_stack.base_url}/favicon-{index}.ico", timeout=30)
    http.get(f"/v1/models/{ingot_stack.model}")
    metrics = httpx.get(f"{ingot_stack.base_url}/metrics", timeout=30).text
    routes = set(re.findall(r'ingot_requests_total\{route="([^"]*)"', metrics))
    assert not any("junk" in route or "favicon" in route for route in routes), routes
    assert {"unmatched", "/v1/models/{model_id:path}"} <= routes
