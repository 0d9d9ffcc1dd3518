"""SIGTERM drains the gateway: new requests get 503, running streams go on up to the drain timeout, the rest end
with an error event and [DONE], their Triton requests are cancelled, and nothing is left running.

The streams here ask for tens of thousands of tokens of the demo model with a long context
(`long_context_artifact`): minutes of generation, so they are surely still running when the drain timeout ends
them. The short stream asks for a fifth of what the engine makes in the drain timeout, measured first.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx
import psutil
import pytest

from engines.triton.launcher import free_port
from server.stack import DEMO_API_KEY
from tests.conftest import ROOT, TEST_API_KEY, start_gateway
from tests.e2e.engine_probe import CEILING_S, running, wait_until

pytestmark = pytest.mark.e2e

DRAIN_S = 10.0
LONG = 30000


@dataclass
class Stream:
    """A streamed request read on a thread, each line with the time it arrived."""

    path: str
    body: dict
    lines: list[tuple[float, str]] = field(default_factory=list)
    status: int | None = None
    thread: threading.Thread | None = None

    def start(self, base_url: str, api_key: str) -> "Stream":
        def read() -> None:
            headers = {"Authorization": f"Bearer {api_key}"}
            with httpx.stream("POST", base_url + self.path, json=self.body, headers=headers, timeout=120) as reply:
                self.status = reply.status_code
                for line in reply.iter_lines():
                    if line:
                        self.lines.append((time.monotonic(), line))

        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()
        return self

    def data(self) -> list[str]:
        return [line[len("data: "):] for _, line in self.lines if line.startswith("data: ")]

    def wait(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.path}: the stream did not end: {self.data()[-3:]}"


def long_body(path: str, max_tokens: int = LONG) -> dict:
    body = {"model": "demo-llama", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    if path == "/v1/completions":
        return {**body, "prompt": "Once upon a time"}
    return {**body, "messages": [{"role": "user", "content": "Tell me a long story."}]}


def tokens_of(stream: Stream) -> int:
    """Tokens streamed so far by a completions stream that asked for logprobs (a chunk may carry several)."""
    chunks = [json.loads(data) for data in stream.data() if data.startswith("{")]
    return sum(len((chunk["choices"][0]["logprobs"] or {}).get("tokens", [])) for chunk in chunks if chunk["choices"])


def tokens_per_second(stream: Stream, seconds: float) -> float:
    """The engine's pace for one stream now."""
    before = tokens_of(stream)
    time.sleep(seconds)
    return max((tokens_of(stream) - before) / seconds, 1.0)


def wait_for_data(stream: Stream, timeout: float = 60) -> None:
    wait_until(lambda: len(stream.data()) >= 2, timeout, f"{stream.path}: no tokens ({stream.status})")


def assert_ended_by_drain(stream: Stream, signalled: float) -> None:
    data = stream.data()
    assert data[-1] == "[DONE]", data[-3:]
    error = json.loads(data[-2])["error"]
    assert error["code"] == "server_shutting_down" and error["type"] == "service_unavailable", error
    assert stream.lines[-1][0] - signalled >= DRAIN_S - 1.0, "ended before the drain timeout"


def assert_refusing(base_url: str, api_key: str) -> None:
    wait_until(lambda: httpx.get(f"{base_url}/ready", timeout=10).status_code == 503, 30, "/ready stays 200")
    assert httpx.get(f"{base_url}/health", timeout=10).status_code == 200  # liveness: do not kill a draining pod
    refused = httpx.post(f"{base_url}/v1/completions", headers={"Authorization": f"Bearer {api_key}"}, timeout=30,
                         json={"model": "demo-llama", "prompt": "Hi", "max_tokens": 4})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "server_shutting_down"
    assert int(refused.headers["retry-after"]) > 0 and refused.headers["connection"] == "close"


@pytest.fixture(scope="module")
def long_triton(long_context_artifact, triton_server_factory):
    return triton_server_factory(long_context_artifact / "model_repository")


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_short_streams_finish_and_ends_long_ones(long_context_artifact, long_triton, tmp_path, workers):
    process, base_url = start_gateway(long_context_artifact, long_triton.grpc_url, tmp_path / "gateway.log",
                                      {"INGOT_DRAIN_TIMEOUT": str(DRAIN_S), "INGOT_GATEWAY_WORKERS": str(workers)})
    try:
        wait_until(lambda: httpx.get(f"{base_url}/ready", timeout=10).status_code == 200, 60, "not ready")
        gateways = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        longs = [Stream("/v1/completions", {**long_body("/v1/completions"), "logprobs": 0}),
                 Stream("/v1/chat/completions", long_body("/v1/chat/completions"))]
        for stream in longs:
            stream.start(base_url, TEST_API_KEY)
        for stream in longs:
            wait_for_data(stream)
        pace = tokens_per_second(longs[0], 2.0)
        short = Stream("/v1/chat/completions", long_body("/v1/chat/completions", int(max(8, pace * DRAIN_S / 5))))
        short.start(base_url, TEST_API_KEY)
        wait_for_data(short)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert_refusing(base_url, TEST_API_KEY)

        short.wait(DRAIN_S + 60)
        data = short.data()
        assert data[-1] == "[DONE]" and not any('"error"' in line for line in data), data[-3:]
        assert json.loads(data[-2])["choices"][0]["finish_reason"] == "length"
        assert short.lines[-1][0] > signalled, "the short stream ended before the signal: nothing was drained"
        for stream in longs:
            stream.wait(DRAIN_S + 60)
            assert stream.status == 200
            assert_ended_by_drain(stream, signalled)
        wait_until(lambda: running(long_triton) == 0, CEILING_S, "the ended streams' requests go on in Triton")
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # multiprocessing's resource tracker, if any, ends once it reads the end of its pipe: give it a moment.
    wait_until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in gateways), 15,
               "a gateway process outlived the gateway")


def test_sigterm_to_serve_drains_then_stops_triton(long_context_artifact, tmp_path):
    """`ingot serve` with two gateway workers: the stream is ended by the drain, then Triton stops, and no
    tritonserver, stub or gateway process is left."""
    port, work = free_port(), tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGOT_API_KEYS")}
    command = [sys.executable, "-m", "server.cli", "serve", "--artifact", str(long_context_artifact),
               "--port", str(port), "--work-dir", str(work), "--gateway-workers", "2",
               "--drain-timeout", str(DRAIN_S)]
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                return httpx.get(f"{base_url}/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 300, "the stack did not become ready")
        stream = Stream("/v1/completions", long_body("/v1/completions")).start(base_url, DEMO_API_KEY)
        wait_for_data(stream)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert_refusing(base_url, DEMO_API_KEY)
        stream.wait(DRAIN_S + 60)
        assert_ended_by_drain(stream, signalled)
        process.wait(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    leftover = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True)
    assert leftover.stdout.split() == [], f"outlived `serve`: {leftover.stdout}\n{log_path.read_text()[-2000:]}"
