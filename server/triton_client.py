"""The gateway's only way to an engine: Triton's gRPC streaming API with the contract's tensors.

Each generation opens its own bidirectional stream with one request, so leaving the iteration early
(a stop string, a client that went away) cancels exactly that request in Triton, which stops it in
the engine.
"""
from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from engines import contract

RESPONSE_TENSORS = ("output_ids", "sequence_length", "output_log_probs")
UNAVAILABLE_MARKERS = ("unavailable", "failed to connect", "connection refused", "is not found", "not ready",
                       "socket closed", "unknown model")


class EngineUnavailable(RuntimeError):
    """Triton cannot be reached or the model is not loaded: the gateway answers 503."""


class EngineRejected(ValueError):
    """The engine refused the request as invalid: the gateway answers 400."""


class EngineTimeout(RuntimeError):
    """The engine did not answer within the request's deadline: the gateway answers 504."""


class EngineFailed(RuntimeError):
    """The engine failed while generating: the gateway answers 500."""


def response_tensors(request: contract.GenerationRequest) -> tuple[str, ...]:
    """The outputs a request needs: logprobs, the beams' scores, and the logits rows only when asked
    (a row is the whole vocabulary)."""
    names = [name for name in RESPONSE_TENSORS if name != "output_log_probs" or request.return_log_probs]
    if request.return_log_probs or request.beam_width > 1:
        names.append("cum_log_probs")
    if request.return_context_logits:
        names.append("context_logits")
    if request.return_generation_logits:
        names.append("generation_logits")
    return tuple(names)


def classify(error: Exception) -> Exception:
    message = str(error)
    lowered = message.lower()
    code = error.code() if isinstance(error, grpc.RpcError) and hasattr(error, "code") else None
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or "deadline exceeded" in lowered:
        return EngineTimeout(message)
    if "invalid request:" in lowered:
        return EngineRejected(message[lowered.index("invalid request:") + len("invalid request:"):].strip())
    if any(marker in lowered for marker in UNAVAILABLE_MARKERS):
        return EngineUnavailable(message)
    return EngineFailed(message)


def _infer_inputs(tensors: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, array in tensors.items():
        infer_input = grpcclient.InferInput(name, list(array.shape), contract.INPUT_SPECS[name].wire_dtype)
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return inputs


def _is_final(response) -> bool:
    parameters = response.parameters
    return "triton_final_response" in parameters and parameters["triton_final_response"].bool_param


def fast_path(request: contract.GenerationRequest, names: tuple[str, ...]) -> bool:
    """`chunk_of` reads one beam's ids and logprobs; beams, scores and logits rows need `decode_chunk`."""
    return request.beam_width == 1 and set(names) <= set(RESPONSE_TENSORS)


def slow_chunk_of(result, names: tuple[str, ...]) -> contract.GenerationChunk:
    tensors = {name: result.as_numpy(name) for name in names}
    return contract.decode_chunk(tensors, final=_is_final(result.get_response()))


def chunk_of(result) -> contract.GenerationChunk:
    """The contract's chunk (beam 0 of batch 0) read straight from the response's raw little-endian bytes,
    without building numpy arrays per tensor: this runs once per streamed response of a request that
    `fast_path` accepts."""
    response = result.get_response()
    final, raw = _is_final(response), response.raw_output_contents
    if len(raw) != len(response.outputs):  # contents not sent raw: the general path
        return slow_chunk_of(result, tuple(output.name for output in response.outputs))
    tensors = {output.name: (output.shape, raw[index]) for index, output in enumerate(response.outputs)}
    if "output_ids" not in tensors:
        return contract.GenerationChunk([], None, final)
    shape, data = tensors["output_ids"]
    ids = memoryview(data).cast("i")[: shape[-1] if shape else 0]
    if "sequence_length" in tensors and tensors["sequence_length"][1]:
        ids = ids[: memoryview(tensors["sequence_length"][1]).cast("i")[0]]
    log_probs = None
    if "output_log_probs" in tensors and tensors["output_log_probs"][1]:
        shape, data = tensors["output_log_probs"]
        log_probs = memoryview(data).cast("f")[: shape[-1]][: len(ids)].tolist()
    return contract.GenerationChunk(ids.tolist(), log_probs, final)


def keepalive_options(keepalive_s: float) -> grpcclient.KeepAliveOptions:
    """Pings while requests are open, so a frozen or vanished Triton fails them (UNAVAILABLE) in about
    1.5 x `keepalive_s` instead of leaving them to their deadline; no pings on an idle channel, which Triton
    would count as abuse. 0 turns pings off (tritonclient's default)."""
    if not keepalive_s:
        return grpcclient.KeepAliveOptions()
    return grpcclient.KeepAliveOptions(keepalive_time_ms=int(keepalive_s * 1000),
                                       keepalive_timeout_ms=int(max(keepalive_s / 2, 1) * 1000),
                                       keepalive_permit_without_calls=False, http2_max_pings_without_data=0)


class TritonEngineClient:
    def __init__(self, url: str, model_name: str = contract.MODEL_NAME, ready_timeout_s: float = 2.0,
                 keepalive_s: float = 0.0):
        self.url, self.model_name, self.ready_timeout_s = url, model_name, ready_timeout_s
        self.keepalive_s = keepalive_s
        self._client: grpcclient.InferenceServerClient | None = None

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:  # created lazily: it binds to the running event loop
            self._client = grpcclient.InferenceServerClient(
                self.url, keepalive_options=keepalive_options(self.keepalive_s))
        return self._client

    async def is_ready(self) -> bool:
        try:
            return await asyncio.wait_for(self.client.is_model_ready(self.model_name), self.ready_timeout_s)
        except (InferenceServerException, grpc.RpcError, asyncio.TimeoutError, OSError):
            return False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def generate(
        self, request: contract.GenerationRequest, request_id: str = "", deadline: float | None = None
    ) -> AsyncIterator[contract.GenerationChunk]:
        """Chunks of new tokens until the final one; raises EngineUnavailable/EngineRejected/EngineTimeout/
        EngineFailed. `deadline` (time.monotonic()) becomes the gRPC deadline of the stream: gRPC ends the call
        when it passes, even if Triton no longer answers, and Triton cancels the request when it sees that."""
        done = asyncio.Event()
        names = response_tensors(request)
        decode = chunk_of if fast_path(request, names) else functools.partial(slow_chunk_of, names=names)
        outputs = [grpcclient.InferRequestedOutput(name) for name in names]
        inputs = _infer_inputs(contract.encode_request(request))

        async def requests():
            yield {"model_name": self.model_name, "inputs": inputs, "outputs": outputs, "request_id": request_id}
            await done.wait()  # keep our half of the stream open until the answer is complete

        try:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            call = self.client.stream_infer(requests(), stream_timeout=timeout)
        except InferenceServerException as exc:
            raise classify(exc) from exc
        finished = False
        try:
            async for result, error in call:
                if error is not None:
                    raise classify(error)
                chunk = decode(result)
                yield chunk
                if chunk.final:
                    finished = True
                    return
            raise EngineFailed("the engine closed the stream before its final response")
        except (InferenceServerException, grpc.RpcError) as exc:
            raise classify(exc) from exc
        finally:
            done.set()
            if not finished:
                call.cancel()
