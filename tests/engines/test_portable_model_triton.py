"""The portable model inside the real tritonserver: every request ends with a final response (cancelled,
stopped or finished), so Triton frees it, and the model unloads and its stub exits when Triton stops."""
from __future__ import annotations

import os
import queue
import signal
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as grpcclient

from engines import contract
from engines.targets.portable import build_portable
from engines.triton.launcher import start_triton
from engines.triton.processes import alive, cmdline, descendants
from tests.conftest import TEST_SETTINGS

pytestmark = pytest.mark.e2e
PROMPT = [1, 150, 43, 292, 92, 20, 26, 366]


def inputs(request: contract.GenerationRequest) -> list[grpcclient.InferInput]:
    result = []
    for name, array in contract.encode_request(request).items():
        infer_input = grpcclient.InferInput(name, list(array.shape), contract.INPUT_SPECS[name].dtype)
        infer_input.set_data_from_numpy(array)
        result.append(infer_input)
    return result


def is_final(result) -> bool:
    parameters = result.get_response().parameters
    return "triton_final_response" in parameters and parameters["triton_final_response"].bool_param


class Stream:
    """One gRPC stream with one generation on it, its responses collected in a queue."""

    def __init__(self, url: str, request: contract.GenerationRequest | None, request_id: str = ""):
        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))
        if request is not None:
            self.send(request, request_id)

    def send(self, request: contract.GenerationRequest, request_id: str = "") -> None:
        self.client.async_stream_infer(contract.MODEL_NAME, inputs(request), request_id=request_id,
                                       enable_empty_final_response=True)

    def next(self, timeout: float = 120):
        result, error = self.responses.get(timeout=timeout)
        assert error is None, error
        if result.as_numpy("output_ids") is None:  # a final flag alone
            return contract.GenerationChunk(output_ids=[], final=is_final(result))
        return contract.decode_chunk({"output_ids": result.as_numpy("output_ids"),
                                      "sequence_length": result.as_numpy("sequence_length")}, is_final(result))

    def until_final(self, timeout: float = 120) -> list[contract.GenerationChunk]:
        chunks = [self.next(timeout)]
        while not chunks[-1].final:
            chunks.append(self.next(timeout))
        return chunks


def long_request(**fields) -> contract.GenerationRequest:
    """Greedy, never ending on an end id: only its length, a stop or a cancellation ends it."""
    defaults = {"input_ids": PROMPT, "request_output_len": 400, "end_id": -1, "temperature": 0.0}
    return contract.GenerationRequest(**{**defaults, **fields})


def gauge(server, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def wait_for(condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


@pytest.fixture(scope="module")
def in_stub_artifact(demo_checkpoints, tmp_path_factory) -> Path:
    """The demo with the engine in the stub's interpreter (the CPU default); demo_artifact runs it in a process."""
    artifact = tmp_path_factory.mktemp("artifact") / "demo-llama-in-stub"
    build_portable(demo_checkpoints["llama"], artifact, replace(TEST_SETTINGS, engine_process="false"),
                   model_name="demo-llama")
    return artifact


@pytest.fixture(params=["engine process", "engine in the stub"])
def server(request, tmp_path):
    artifact = request.getfixturevalue("demo_artifact" if request.param == "engine process" else "in_stub_artifact")
    server = start_triton(artifact / "model_repository", tmp_path / "triton")
    server.wait_ready(timeout=240)
    server.engine_process = request.param == "engine process"
    yield server
    server.stop()


def test_streamed_tokens_equal_one_final_response(server):
    whole = Stream(server.grpc_url, long_request(request_output_len=40, streaming=False)).until_final()
    streamed = Stream(server.grpc_url, long_request(request_output_len=40)).until_final()
    assert len(whole) == 1 and len(whole[0].output_ids) == 40
    assert [t for chunk in streamed for t in chunk.output_ids] == whole[0].output_ids


def test_stop_tensor_ends_the_request_with_a_final_response(server):
    stopper = Stream(server.grpc_url, None)  # connected beforehand: the stop leaves at once
    stream = Stream(server.grpc_url, long_request(request_output_len=480), request_id="to-stop")
    first = stream.next()
    assert not first.final
    stopper.send(long_request(stop=True), request_id="to-stop")
    assert stopper.until_final()[-1].final
    chunks = stream.until_final()
    assert sum(len(c.output_ids) for c in [first, *chunks]) < 480
    wait_for(lambda: gauge(server, "ingot_engine_running_requests") == 0, 30, "the stopped request is still held")


def test_cancelled_requests_are_freed_and_the_stub_exits_with_triton(server):
    streams = [Stream(server.grpc_url, long_request(request_output_len=480)) for _ in range(6)]
    for stream in streams:
        stream.next()  # generating
    below = descendants(server.process.pid)
    stubs = [pid for pid in below if "triton_python_backend_stub" in cmdline(pid)]
    assert stubs, "the model runs in a Python-backend stub"
    engines = [pid for pid in below if "engines.triton.engine_process" in cmdline(pid)]
    assert len(engines) == (1 if server.engine_process else 0)
    for stream in streams:
        stream.client.stop_stream(cancel_requests=True)
    # Each gauge is published on its own (a round trip each, every cancellation_check_period_ms): wait for a
    # publication that shows no request and every KV block free.
    wait_for(lambda: gauge(server, "ingot_engine_running_requests") == 0
             and gauge(server, "ingot_engine_free_kv_blocks") == gauge(server, "ingot_engine_total_kv_blocks"),
             30, "cancelled requests kept generating or kept their KV blocks")
    # Triton unloads the model only once every request got its final response: the stub then exits by itself.
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=90)
    wait_for(lambda: not any(alive(pid) for pid in stubs + engines), 30,
             "the Python-backend stub or the engine process outlived tritonserver")
    assert "failed to unload" not in server.log_tail(400).lower()


@pytest.mark.parametrize("server", ["engine process"], indirect=True)
def test_a_dead_engine_process_fails_its_requests_and_later_ones_at_once(server):
    stream = Stream(server.grpc_url, long_request(request_output_len=480))
    assert not stream.next().final  # generating
    engines = [pid for pid in descendants(server.process.pid) if "engines.triton.engine_process" in cmdline(pid)]
    assert len(engines) == 1
    os.kill(engines[0], signal.SIGKILL)
    while True:  # tokens already on their way may come first; then the error, never a hang
        result, error = stream.responses.get(timeout=60)
        if error is not None:
            break
        assert not is_final(result), "the request ended as if it had finished"
    assert "engine process exited" in str(error)
    later = Stream(server.grpc_url, long_request(request_output_len=8))
    _, error = later.responses.get(timeout=60)
    assert error is not None and "engine process exited" in str(error)
    wait_for(lambda: gauge(server, "ingot_engine_running_requests") == 0, 30, "failed requests are still held")
