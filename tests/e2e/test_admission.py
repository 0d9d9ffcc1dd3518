"""Admission control and per-key limits on a real gateway in front of the real Triton: 413 for big bodies,
400 for too many prompts, 429 with Retry-After and OpenAI's x-ratelimit-* headers, usage per key id, and
limits shared by two gateways through a real redis-server."""
from __future__ import annotations

import json
import re
import select
import socket
import subprocess
import time
from contextlib import contextmanager
from urllib.parse import urlparse

import httpx
import openai
import pytest

from server.auth import hash_key
from tests.conftest import start_gateway
from tests.e2e.test_errors_and_cancellation import assert_error

pytestmark = pytest.mark.e2e

KEYS = {
    "sk-team-a": "id=team-a rpm=3",
    "sk-tokens": "id=tokens tpm=20",
    "sk-one-at-a-time": "id=solo concurrency=1",
    "sk-quota": "id=quota quota=40/day quota_soft=10",
    "sk-free": "id=free",
}
BODY_LIMIT = 64 << 10


def key_file(path, keys: dict[str, str]):
    path.write_text("".join(f"sha256:{hash_key(key)} {options}\n" for key, options in keys.items()))
    return path


class Gateway:
    def __init__(self, ingot_stack, tmp_path, env: dict[str, str]):
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.usage_log = tmp_path / "usage.jsonl"
        env = {"INGOT_API_KEYS_FILE": str(key_file(tmp_path / "keys.txt", KEYS)),
               "INGOT_USAGE_LOG": str(self.usage_log), **env}
        self.process, self.base_url = start_gateway(ingot_stack.artifact, ingot_stack.triton.grpc_url,
                                                    tmp_path / "gateway.log", env)
        self.model = ingot_stack.model

    def post(self, key: str, path: str = "/v1/completions", **body) -> httpx.Response:
        body = {"model": self.model, "prompt": "Hello", "max_tokens": 2, **body}
        return httpx.post(f"{self.base_url}{path}", json=body, headers={"Authorization": f"Bearer {key}"},
                          timeout=120)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def gateway(ingot_stack, tmp_path_factory):
    gateway = Gateway(ingot_stack, tmp_path_factory.mktemp("admission"), {
        "INGOT_MAX_BODY_BYTES": str(BODY_LIMIT), "INGOT_MAX_PROMPTS_PER_REQUEST": "4", "INGOT_MAX_IN_FLIGHT": "3"})
    yield gateway
    gateway.stop()


def assert_429(response: httpx.Response, code: str, type_: str) -> None:
    error = assert_error(response, 429, code=code)
    assert error["type"] == type_
    assert int(response.headers["retry-after"]) >= 1


def test_a_declared_body_over_the_limit_is_413(gateway):
    response = gateway.post("sk-free", prompt="x" * (2 * BODY_LIMIT))
    assert_error(response, 413, code="request_too_large")


def test_a_chunked_body_over_the_limit_is_refused_while_it_is_sent(gateway):
    """No Content-Length: the gateway stops reading at the limit and answers, long before the body ends."""
    url = urlparse(gateway.base_url)
    total, sent = 64 << 20, 0
    chunk = b"x" * 65536
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer sk-free\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is there
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"request_too_large" in answer
    assert sent < total, "the gateway read the whole 64 MiB body before answering"


def read_response(sock: socket.socket) -> bytes:
    """One HTTP response with a Content-Length, read whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_too_many_prompts_is_400_before_any_work(gateway):
    assert_error(gateway.post("sk-free", prompt=["a", "b", "c", "d", "e"]), 400, "prompt", "too_many_prompts")
    assert_error(gateway.post("sk-free", prompt=[[1, 2]] * 5), 400, "prompt", "too_many_prompts")
    assert gateway.post("sk-free", prompt=["a", "b", "c", "d"]).status_code == 200


@contextmanager
def held_requests(gateway, key: str, count: int):
    """Requests whose bodies are still arriving: admitted and counted, never finishing while held."""
    url = urlparse(gateway.base_url)
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection((url.hostname, url.port), timeout=60)
            sockets.append(sock)
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer %s\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{" % key.encode())
        yield
    finally:
        for sock in sockets:
            sock.close()


def eventually(gateway, key: str, status: int) -> httpx.Response:
    """The first answer with `status` to a small request, polling (the gateway sees held requests a moment later)."""
    deadline = time.monotonic() + 60
    while (response := gateway.post(key)).status_code != status:
        assert time.monotonic() < deadline, f"still {response.status_code}, expected {status}: {response.text}"
        time.sleep(0.2)
    return response


def test_requests_in_flight_beyond_the_limit_get_429_not_a_queue(gateway):
    with held_requests(gateway, "sk-free", 3):
        assert_429(eventually(gateway, "sk-free", 429), "server_overloaded", "server_overloaded")
    eventually(gateway, "sk-free", 200)  # the held requests' slots are free once their clients left


def test_requests_per_minute_with_openai_headers(gateway):
    remaining = []
    for _ in range(3):
        response = gateway.post("sk-team-a")
        if response.status_code == 429:  # the minute turned while we were at it: start again
            pytest.skip("crossed a minute boundary")
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        assert re.fullmatch(r"(\d+m)?\d+(\.\d+)?s|\d+ms", response.headers["x-ratelimit-reset-requests"])
        remaining.append(response.headers["x-ratelimit-remaining-requests"])
    assert remaining[-1] == "0"
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="sk-team-a", max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.completions.create(model=gateway.model, prompt="Hello", max_tokens=2)
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) <= 60
    assert gateway.post("sk-free").status_code == 200  # other keys are not affected


def test_tokens_per_minute(gateway):
    first = gateway.post("sk-tokens", max_tokens=30, ignore_eos=True)
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-tokens"] == "20"
    second = gateway.post("sk-tokens")
    if second.status_code == 200:  # the minute turned between the two requests
        pytest.skip("crossed a minute boundary")
    assert_429(second, "rate_limit_exceeded", "tokens")


def test_concurrent_requests_per_key(gateway):
    with held_requests(gateway, "sk-one-at-a-time", 1):
        assert_429(eventually(gateway, "sk-one-at-a-time", 429), "rate_limit_exceeded", "concurrency")
    eventually(gateway, "sk-one-at-a-time", 200)


def test_hard_quota_then_insufficient_quota(gateway):
    assert gateway.post("sk-quota", max_tokens=40, ignore_eos=True).status_code == 200
    response = gateway.post("sk-quota")
    assert_429(response, "insufficient_quota", "insufficient_quota")
    assert "quota" in response.json()["error"]["message"]


def test_usage_per_key_id_in_metrics_and_the_usage_log(gateway):
    response = gateway.post("sk-free", path="/v1/chat/completions", messages=[{"role": "user", "content": "hi"}],
                            max_tokens=5, ignore_eos=True)
    usage = response.json()["usage"]
    metrics = httpx.get(f"{gateway.base_url}/metrics", timeout=30).text
    assert 'ingot_key_completion_tokens_total{key_id="free"}' in metrics
    assert 'ingot_key_rate_limited_total{key_id="team-a",limit="requests"}' in metrics
    assert not any(key in metrics or hash_key(key) in metrics for key in KEYS)
    deadline = time.monotonic() + 30
    while True:  # the line is written once the response has ended, a moment after the client has it
        records = [json.loads(line) for line in gateway.usage_log.read_text().splitlines()]
        chats = [r for r in records if r["route"] == "/v1/chat/completions" and r["key_id"] == "free"]
        if chats or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    chat = chats[-1]
    assert (chat["prompt_tokens"], chat["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert chat["status"] == 200 and chat["method"] == "POST"
    assert any(r["key_id"] == "team-a" and r["status"] == 429 for r in records)
    assert not any(key in gateway.usage_log.read_text() for key in KEYS)


def test_two_gateways_share_limits_through_redis(ingot_stack, redis_server, tmp_path):
    import redis

    redis.Redis.from_url(redis_server.url).flushdb()
    one = Gateway(ingot_stack, tmp_path / "one", {"INGOT_REDIS_URL": redis_server.url})
    two = Gateway(ingot_stack, tmp_path / "two", {"INGOT_REDIS_URL": redis_server.url})
    try:
        statuses = [gw.post("sk-team-a").status_code for gw in (one, two, one)]
        if statuses != [200, 200, 200]:
            pytest.skip(f"crossed a minute boundary: {statuses}")
        assert_429(two.post("sk-team-a"), "rate_limit_exceeded", "requests")
        assert_429(one.post("sk-team-a"), "rate_limit_exceeded", "requests")
    finally:
        one.stop()
        two.stop()
