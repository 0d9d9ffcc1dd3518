"""Triton accepts the gateway's gRPC keepalive pings while a stream waits without data (a queued request).

Triton's default would count pings less than 5 minutes apart without data as abuse and, after two, close the
connection with every request on it; `ingot serve` (engines/triton/launcher.py) and the k8s launch script let
pings through down to one every 5 s.
"""
from __future__ import annotations

import queue
import time

import pytest
import tritonclient.grpc as grpcclient

from engines import contract
from server.triton_client import keepalive_options

pytestmark = pytest.mark.e2e

PING_S = 6.0  # just above the floor `ingot serve` gives Triton, so the test is short
WAIT_S = 7 * PING_S  # Triton 2.51's default policy closed the connection at the fifth ping (31 s)


def stream_after_silence(grpc_url: str, wait_s: float) -> contract.GenerationChunk:
    """Open a stream, keep it silent for `wait_s` while the channel pings, then ask for two tokens on it."""
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url, keepalive_options=keepalive_options(PING_S))
    try:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        time.sleep(wait_s)
        inputs = []
        for name, array in contract.encode_request(contract.GenerationRequest([1, 2, 3], 2)).items():
            infer_input = grpcclient.InferInput(name, list(array.shape), contract.INPUT_SPECS[name].wire_dtype)
            infer_input.set_data_from_numpy(array)
            inputs.append(infer_input)
        client.async_stream_infer(contract.MODEL_NAME, inputs, enable_empty_final_response=True)
        result, error = results.get(timeout=120)
        assert error is None, f"the stream did not survive its keepalive pings: {error}"
        return contract.decode_chunk({"output_ids": result.as_numpy("output_ids")}, final=False)
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


def test_a_silent_stream_survives_the_gateways_pings(ingot_stack):
    chunk = stream_after_silence(ingot_stack.triton.grpc_url, WAIT_S)
    assert chunk.output_ids
