"""A calibration target: an OpenAI- and TGI-shaped server that streams fixed tokens at a known pace.

Point the benchmark at it to check the tool itself: with a TTFT of 50 ms and one token every 20 ms, the
measured TTFT should come out near 50 ms and the per-user decode speed near 50 tok/s. It always generates
exactly `max_tokens` tokens (as if `ignore_eos` were set) and counts prompt tokens as whitespace-separated
words. It can also misbehave on purpose, to exercise the benchmark's error accounting: require an API key,
answer every n-th request with HTTP 500, or break every n-th stream after a few tokens.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


@dataclass(frozen=True)
class Pace:
    ttft: float = 0.05              # seconds from the request to the first token
    itl: float = 0.02               # seconds between tokens
    model: str = "calibration"
    api_key: str | None = None      # when set, requests must carry `Authorization: Bearer <api_key>`
    fail_every: int = 0             # answer every n-th request with HTTP 500 (0: never)
    break_every: int = 0            # close every n-th stream abruptly after `break_after` tokens (0: never)
    break_after: int = 2


def create_app(pace: Pace = Pace()) -> FastAPI:
    app = FastAPI(title="ingot calibration target")
    # Per stream: [arrival, token 0 sent, token 1 sent, ...] on time.perf_counter's clock. A benchmark run in
    # the same process shares that clock, so tests can check its figures against what really happened here.
    app.state.timings = []
    counter = itertools.count(1)

    def stamps(arrival: float) -> list[float]:
        app.state.timings.append(times := [arrival])
        return times

    async def admit(request: Request) -> tuple[dict | None, JSONResponse | None, bool]:
        """(body, an error response to send instead, whether to break this stream)."""
        if pace.api_key and request.headers.get("authorization") != f"Bearer {pace.api_key}":
            return None, _error(401, "invalid API key"), False
        number = next(counter)
        if pace.fail_every and number % pace.fail_every == 0:
            return None, _error(500, "calibration target: planned failure"), False
        return await request.json(), None, bool(pace.break_every and number % pace.break_every == 0)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": pace.model, "object": "model", "owned_by": "calibration"}]}

    async def stream(request: Request, events):
        """Admit the request, then stream `events(body, broken, times)` as server-sent events."""
        times = stamps(time.perf_counter())
        body, error, broken = await admit(request)
        return error or _sse(events(body, broken, times))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        def events(body, broken, times):
            prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
            return _openai_events("chat.completion.chunk", body, prompt, pace, broken, times)
        return await stream(request, events)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await stream(request, lambda body, broken, times: _openai_events(
            "text_completion", body, str(body.get("prompt", "")), pace, broken, times))

    @app.post("/generate_stream")
    async def generate_stream(request: Request):
        return await stream(request, lambda body, broken, times: _tgi_events(body, pace, broken, times))

    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "calibration", "code": status}}, status_code=status)


def _sse(events: AsyncIterator[dict | str]) -> StreamingResponse:
    async def frames() -> AsyncIterator[str]:
        async for event in events:
            yield f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n"
    return StreamingResponse(frames(), media_type="text/event-stream")


async def _paced(count: int, pace: Pace, broken: bool, times: list[float]) -> AsyncIterator[int]:
    """Token numbers 0..count-1, token k due at ttft + k·itl after the start (no drift from late wake-ups);
    each one's real send time is appended to `times`."""
    start = time.perf_counter()
    for k in range(count):
        if broken and k == pace.break_after:
            raise ConnectionAbortedError("calibration target: planned broken stream")
        await asyncio.sleep(max(0.0, start + pace.ttft + k * pace.itl - time.perf_counter()))
        times.append(time.perf_counter())
        yield k


async def _openai_events(kind: str, body: dict, prompt: str, pace: Pace, broken: bool,
                         times: list[float]) -> AsyncIterator[dict | str]:
    count = int(body.get("max_tokens") or 16)
    base = {"id": "calibration", "object": kind, "created": int(time.time()), "model": pace.model}
    if kind == "chat.completion.chunk":
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    async for k in _paced(count, pace, broken, times):
        finish = "length" if k == count - 1 else None
        choice = ({"index": 0, "delta": {"content": f" t{k}"}, "finish_reason": finish}
                  if kind == "chat.completion.chunk" else {"index": 0, "text": f" t{k}", "finish_reason": finish})
        yield {**base, "choices": [choice]}
    if (body.get("stream_options") or {}).get("include_usage"):
        prompt_tokens = len(prompt.split())
        yield {**base, "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": count,
                                                "total_tokens": prompt_tokens + count}}
    yield "[DONE]"


async def _tgi_events(body: dict, pace: Pace, broken: bool, times: list[float]) -> AsyncIterator[dict]:
    count = int((body.get("parameters") or {}).get("max_new_tokens") or 16)
    text = []
    async for k in _paced(count, pace, broken, times):
        text.append(f" t{k}")
        last = k == count - 1
        yield {"index": k + 1, "token": {"id": k, "text": f" t{k}", "logprob": 0.0, "special": False},
               "generated_text": "".join(text) if last else None,
               "details": {"finish_reason": "length", "generated_tokens": count, "seed": None,
                           "input_length": len(str(body.get("inputs", "")).split())} if last else None}


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` under uvicorn on a background thread; yields its base URL, stops it on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the calibration target did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def serve(pace: Pace, host: str, port: int) -> None:
    uvicorn.run(create_app(pace), host=host, port=port, log_level="warning")
