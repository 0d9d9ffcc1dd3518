"""A frozen Triton (SIGSTOP) never hangs a client: every request is answered within its deadline, in OpenAI's
error shape, and Triton cancels the requests once it runs again."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from tests.conftest import TEST_API_KEY, start_gateway
from tests.e2e.engine_probe import assert_engine_drained, running, wait_until

pytestmark = pytest.mark.e2e

DEADLINE_S = 8
FIRST_TOKEN_S = 4
SLACK_S = 20  # a busy machine; without deadlines these requests would hang until the client gives up (90 s)


@pytest.fixture()
def stack(long_context_artifact, triton_server_factory, tmp_path):
    triton = triton_server_factory(long_context_artifact / "model_repository")
    env = {"INGOT_REQUEST_TIMEOUT": str(DEADLINE_S), "INGOT_FIRST_TOKEN_TIMEOUT": str(FIRST_TOKEN_S)}
    process, base_url = start_gateway(long_context_artifact, triton.grpc_url, tmp_path / "gateway.log", env)
    yield base_url, triton
    os.kill(triton.process.pid, signal.SIGCONT)  # never leave a stopped server behind
    process.terminate()
    process.wait(timeout=15)


class Call(threading.Thread):
    """One request in the background: its status, its events (streamed) or body, and how long it took."""

    def __init__(self, base_url: str, stream: bool):
        super().__init__(daemon=True)
        self.base_url, self.stream = base_url, stream
        self.first_token = threading.Event()
        self.status, self.events, self.body, self.elapsed = None, [], None, None

    def run(self) -> None:
        body = {"model": "demo-llama", "prompt": "Once upon a time", "max_tokens": 30000, "ignore_eos": True,
                "stream": self.stream}
        started = time.monotonic()
        with httpx.Client(base_url=self.base_url, timeout=90,
                          headers={"Authorization": f"Bearer {TEST_API_KEY}"}) as client:
            with client.stream("POST", "/v1/completions", json=body) as response:
                self.status = response.status_code
                if self.stream and self.status == 200:
                    for line in response.iter_lines():
                        if line.startswith("data: "):
                            self.events.append(line[6:])
                            self.first_token.set()
                else:
                    self.body = json.loads(response.read())
        self.elapsed = time.monotonic() - started


def assert_timely_error(call: Call) -> dict:
    call.join(DEADLINE_S + SLACK_S + 60)
    assert call.elapsed is not None, "the request was never answered"
    assert call.elapsed < DEADLINE_S + SLACK_S
    if call.status == 200:  # a stream that had started: it ends with an error event, then [DONE]
        assert call.events[-1] == "[DONE]"
        error = json.loads(call.events[-2])["error"]
    else:
        assert call.status in (503, 504)
        error = call.body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] in ("deadline_exceeded", "first_token_timeout", "engine_unavailable")
    return error


def test_frozen_triton_answers_every_request_within_the_deadline(stack):
    base_url, triton = stack
    in_flight = [Call(base_url, stream=True), Call(base_url, stream=True), Call(base_url, stream=False)]
    for call in in_flight:
        call.start()
    for call in in_flight[:2]:
        assert call.first_token.wait(60), "the stream never started"
    wait_until(lambda: running(triton) == 3, 30, "the requests never reached the engine")
    os.kill(triton.process.pid, signal.SIGSTOP)
    try:
        new = [Call(base_url, stream=False), Call(base_url, stream=True)]
        for call in new:
            call.start()
        for call in in_flight:
            assert_timely_error(call)
        assert all(call.status == 200 for call in in_flight[:2])
        for call in new:  # no token ever comes: an HTTP error, not a stream
            assert_timely_error(call)
            assert call.status in (503, 504)
    finally:
        os.kill(triton.process.pid, signal.SIGCONT)
    assert_engine_drained(triton)  # Triton saw the cancelled gRPC streams and stopped their requests
