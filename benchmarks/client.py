"""Send one streamed request and time every piece of the answer; never raise, record the failure instead."""
from __future__ import annotations

import asyncio
import json
import time

import httpx

from benchmarks.records import RequestRecord
from benchmarks.targets import Target
from benchmarks.workload import BenchRequest


class StreamError(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail


async def send(client: httpx.AsyncClient, target: Target, request: BenchRequest, t0: float,
               timeout: float = 300.0) -> RequestRecord:
    """Stream `request` to `target` within `timeout` seconds; record times are seconds since `t0` (perf_counter)."""
    record = RequestRecord(request.index, time.perf_counter() - t0, max_tokens=request.max_tokens,
                           expected_prompt_tokens=request.prompt_tokens)
    try:
        async with asyncio.timeout(timeout):
            await _exchange(client, target, request, record, t0)
    except TimeoutError:
        record.error, record.error_detail = "timeout", f"no complete answer within {timeout:g} s"
    except StreamError as error:
        record.error, record.error_detail = error.kind, error.detail
    except httpx.HTTPError as error:
        record.error, record.error_detail = _error_kind(error), f"{type(error).__name__}: {error}"[:300]
    except Exception as error:  # a benchmark records what went wrong and carries on with the next request
        record.error, record.error_detail = "client_error", f"{type(error).__name__}: {error}"[:300]
    record.end_time = time.perf_counter() - t0
    return record


async def _exchange(client: httpx.AsyncClient, target: Target, request: BenchRequest, record: RequestRecord,
                    t0: float) -> None:
    async with client.stream("POST", target.url + target.endpoint, json=target.payload(request),
                             headers=target.headers()) as response:
        record.status = response.status_code
        if response.status_code != 200:
            body = (await response.aread()).decode("utf-8", "replace")
            raise StreamError(f"http_{response.status_code}", body[:300])
        await _read_stream(response, target, record, t0)


def _error_kind(error: httpx.HTTPError) -> str:
    if isinstance(error, httpx.ConnectError):
        return "connect"
    if isinstance(error, httpx.TimeoutException):
        return "timeout"
    if isinstance(error, (httpx.RemoteProtocolError, httpx.ReadError)):
        return "stream_broken"
    return "http_error"


async def _read_stream(response: httpx.Response, target: Target, record: RequestRecord, t0: float) -> None:
    parse = _tgi_event if target.api == "tgi" else _openai_chunk
    chunks, finished = 0, False
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        now = time.perf_counter() - t0
        data = line[5:].strip()
        if data == "[DONE]":
            finished = True
            break
        try:
            event = json.loads(data)
        except json.JSONDecodeError as error:
            raise StreamError("bad_event", data[:300]) from error
        if "error" in event and event["error"]:
            raise StreamError("stream_error", json.dumps(event["error"])[:300])
        carries_output, done = parse(event, record)
        if carries_output:
            chunks += 1
            record.chunk_times.append(now)
            if record.first_token_time is None:
                record.first_token_time = now
        finished = finished or done
    if not finished:
        raise StreamError("stream_incomplete", f"the stream ended after {chunks} chunks without a final event")
    if not record.usage_reported:
        record.output_tokens = chunks
    if record.output_tokens == 0:
        raise StreamError("no_output", "the stream finished without any output")


def _openai_chunk(event: dict, record: RequestRecord) -> tuple[bool, bool]:
    """(carries output, is final). Role-only, finish-only and usage-only chunks carry no output.

    A choice with a `finish_reason` ends the answer: `transformers serve` sends no `[DONE]` after it.
    """
    usage = event.get("usage")
    if usage:
        record.prompt_tokens = usage.get("prompt_tokens")
        record.output_tokens = usage.get("completion_tokens") or 0
        record.usage_reported = True
    carries, final = False, False
    for choice in event.get("choices") or []:
        delta = choice.get("delta") or {}
        text = delta.get("content") or delta.get("reasoning_content") or choice.get("text")
        carries = carries or bool(text or choice.get("logprobs"))
        final = final or bool(choice.get("finish_reason"))
    return carries, final


def _tgi_event(event: dict, record: RequestRecord) -> tuple[bool, bool]:
    """TGI sends one event per token (EOS included); the last also has `generated_text` and `details`."""
    details = event.get("details")
    if details:
        record.output_tokens = details.get("generated_tokens") or 0
        record.prompt_tokens = details.get("input_length", record.prompt_tokens)
        record.usage_reported = record.output_tokens > 0
    token = event.get("token") or {}
    final = event.get("generated_text") is not None
    return bool(token) or final, final


async def resolve_model(client: httpx.AsyncClient, target: Target) -> str | None:
    """The first model the target lists at /v1/models, or None if it lists none or cannot be asked."""
    try:
        response = await client.get(target.url + "/v1/models", headers=target.headers())
        response.raise_for_status()
        models = response.json().get("data") or []
    except (httpx.HTTPError, ValueError):
        return None
    return models[0].get("id") if models else None
