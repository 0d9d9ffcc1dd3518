"""A client that leaves mid-generation cancels its engine request, streamed or not.

The stack here serves the demo model with a long context, so each request asks for far more tokens than the
engine makes in the polling ceiling: a request that kept generating after its client left would keep the
engine's running-requests gauge up for much longer than the ceiling.
"""
from __future__ import annotations

import json
import shutil
import socket
import time
from contextlib import ExitStack
from urllib.parse import urlsplit

import httpx
import pytest

from engines.repository import PortableSettings
from engines.targets.portable import build_portable
from tests.conftest import TEST_API_KEY, start_gateway

pytestmark = pytest.mark.e2e

CONTEXT = 32768
LONG = 30000  # tokens asked for: minutes of generation for the demo model on a CPU
CEILING_S = 10.0  # generous on a busy machine; the cancellation itself takes well under a second
STREAMS = 8  # several: a middleware that loses the disconnect loses it for some streams, not all
SETTINGS = PortableSettings(kv_cache_memory_bytes=160 << 20, max_num_seqs=STREAMS, max_num_batched_tokens=512)


@pytest.fixture(scope="module")
def long_stack(demo_checkpoints, triton_server_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("long-context")
    checkpoint = shutil.copytree(demo_checkpoints["llama"], root / "checkpoint")
    config = json.loads((checkpoint / "config.json").read_text())
    config["max_position_embeddings"] = CONTEXT
    (checkpoint / "config.json").write_text(json.dumps(config))
    artifact = root / "demo-llama"
    build_portable(checkpoint, artifact, SETTINGS, model_name="demo-llama")
    triton = triton_server_factory(artifact / "model_repository")
    process, base_url = start_gateway(artifact, triton.grpc_url, root / "gateway.log")
    yield base_url, triton
    process.terminate()
    process.wait(timeout=15)


def engine_metric(triton, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=10).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]
    assert values, f"{name} not exported by Triton"
    return sum(values)


def running(triton) -> float:
    return engine_metric(triton, "ingot_engine_running_requests")


def wait_until(condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def assert_engine_drained(triton) -> None:
    wait_until(lambda: running(triton) == 0, CEILING_S, "the engine kept generating for clients that went away")
    assert engine_metric(triton, "ingot_engine_free_kv_blocks") == engine_metric(triton, "ingot_engine_total_kv_blocks")


def body_for(path: str, stream: bool) -> dict:
    body = {"model": "demo-llama", "max_tokens": LONG, "ignore_eos": True, "stream": stream}
    if path == "/v1/completions":
        return {**body, "prompt": "Once upon a time"}
    return {**body, "messages": [{"role": "user", "content": "Tell me a long story."}]}


def send_raw_request(base_url: str, path: str, body: dict) -> socket.socket:
    """A POST whose answer we never read: closing the socket is the client leaving."""
    url = urlsplit(base_url)
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {TEST_API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.sendall(head.encode() + payload)
    return sock


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_non_streaming_client_that_leaves_cancels_generation(long_stack, path):
    base_url, triton = long_stack
    assert running(triton) == 0
    sockets = [send_raw_request(base_url, path, body_for(path, stream=False)) for _ in range(3)]
    try:
        wait_until(lambda: running(triton) == 3, 60, "the requests never reached the engine")
        time.sleep(0.5)  # a few hundred tokens into a generation of tens of thousands
        assert running(triton) == 3, "a request finished early: the test's generation is not long enough"
    finally:
        for sock in sockets:
            sock.close()
    assert_engine_drained(triton)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_streaming_client_that_leaves_after_the_first_tokens_cancels_generation(long_stack, path):
    base_url, triton = long_stack
    assert running(triton) == 0
    headers = {"Authorization": f"Bearer {TEST_API_KEY}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client, ExitStack() as streams:
        readers = []  # kept: a line iterator that is dropped closes its response
        for _ in range(STREAMS):
            response = streams.enter_context(client.stream("POST", path, json=body_for(path, stream=True)))
            assert response.status_code == 200
            readers.append(response.iter_lines())
            first = [line for line in (next(readers[-1]) for _ in range(8)) if line.startswith("data: ")]
            assert first and all(json.loads(line[6:])["choices"] for line in first)
        wait_until(lambda: running(triton) == STREAMS, 30, "the streams are not all in the engine")
    assert_engine_drained(triton)
