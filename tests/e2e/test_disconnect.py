"""A client that leaves mid-generation cancels its engine request, streamed or not.

The stack here serves the demo model with a long context (`long_context_artifact`), so each request asks for
far more tokens than the engine makes in the polling ceiling: a request that kept generating after its client
left would keep the engine's running-requests gauge up for much longer than the ceiling.
"""
from __future__ import annotations

import json
import time
from contextlib import ExitStack

import httpx
import pytest

from tests.conftest import TEST_API_KEY, start_gateway
from tests.e2e.engine_probe import assert_engine_drained, running, send_raw_request, wait_until

pytestmark = pytest.mark.e2e

LONG = 30000  # tokens asked for: minutes of generation for the demo model on a CPU
STREAMS = 8  # several: a middleware that loses the disconnect loses it for some streams, not all


@pytest.fixture(scope="module")
def long_stack(long_context_artifact, triton_server_factory, tmp_path_factory):
    triton = triton_server_factory(long_context_artifact / "model_repository")
    process, base_url = start_gateway(long_context_artifact, triton.grpc_url,
                                      tmp_path_factory.mktemp("gateway") / "gateway.log")
    yield base_url, triton
    process.terminate()
    process.wait(timeout=15)


def body_for(path: str, stream: bool) -> dict:
    body = {"model": "demo-llama", "max_tokens": LONG, "ignore_eos": True, "stream": stream}
    if path == "/v1/completions":
        return {**body, "prompt": "Once upon a time"}
    return {**body, "messages": [{"role": "user", "content": "Tell me a long story."}]}


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_non_streaming_client_that_leaves_cancels_generation(long_stack, path):
    base_url, triton = long_stack
    assert running(triton) == 0
    sockets = [send_raw_request(base_url, path, body_for(path, stream=False), TEST_API_KEY) for _ in range(3)]
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
