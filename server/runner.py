"""Runs one generation for a route: engine errors become HTTP errors, metrics and usage are kept."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from fastapi import Request

from server.engine_features import check_request
from server.drain import shutting_down
from server.errors import APIError, bad_request, log, unavailable
from server.generation import Delta, GenerationPlan, generate
from server.metrics import Metrics
from server.triton_client import EngineFailed, EngineRejected, EngineTimeout, EngineUnavailable

T = TypeVar("T")
ENGINE_ERRORS = (EngineUnavailable, EngineRejected, EngineTimeout, EngineFailed)


def timed_out(message: str, code: str) -> APIError:
    return APIError(504, message, "timeout_error", None, code)


def as_api_error(exc: Exception) -> APIError:
    if isinstance(exc, EngineRejected):
        return bad_request(f"The engine rejected the request: {exc}")
    log.warning("engine error (%s): %s", type(exc).__name__, exc)  # gRPC text and addresses stay in the log
    if isinstance(exc, EngineTimeout):
        return timed_out("The request did not finish within its deadline; ask for fewer tokens or retry later.",
                         "deadline_exceeded")
    if isinstance(exc, EngineUnavailable):
        return unavailable("The inference engine is not reachable or not ready; try again shortly.")
    return APIError(500, "The inference engine failed while generating; try again.", "server_error",
                    code="engine_error")


class GenerationRun:
    """A generation whose first delta is fetched before any response is sent, so that an
    unreachable engine is a 503, not a 200 stream that breaks."""

    def __init__(self, request: Request, plan: GenerationPlan, prompt_tokens: int):
        state = request.app.state
        check_request(plan.request, state.model.features)  # a 400 for what the served engine was not built with
        self.metrics: Metrics = state.metrics
        self.plan, self.prompt_tokens = plan, prompt_tokens
        self.completion_tokens = 0
        self.usage = getattr(request.state, "usage", None)  # the key's usage record (server/admission.py)
        self.first_token_s: float | None = None
        self.finish_reason: str | None = None
        self.started = time.perf_counter()
        settings = state.settings
        deadline = time.monotonic() + settings.request_timeout_s if settings.request_timeout_s else None
        self.first_token_timeout_s = settings.first_token_timeout_s or None
        self._deltas = generate(state.engine, state.tokenizer, plan, request.headers.get("x-request-id", ""),
                                deadline)
        self._first: Delta | None = None
        self._wait: asyncio.Timeout | None = None  # the wait on the engine now, which `interrupt` ends
        self.drain = state.drain
        self.drain.runs.add(self)

    def interrupt(self) -> None:
        """The gateway is shutting down (server/drain.py): end the wait on the engine now, if any; the next one
        does not start."""
        if self._wait is not None:
            self._wait.reschedule(asyncio.get_running_loop().time())

    async def _next(self, timeout_s: float | None = None) -> Delta:
        """The engine's next delta; TimeoutError after `timeout_s` or once the drain has ended the generation."""
        if self.drain.expired:
            raise TimeoutError
        async with asyncio.timeout(timeout_s) as self._wait:
            try:
                return await self._deltas.__anext__()
            finally:
                self._wait = None

    async def start(self) -> None:
        self.metrics.in_flight.inc()
        self.metrics.waiting.inc()
        try:
            self._first = await self._next(self.first_token_timeout_s)
        except StopAsyncIteration:
            self._first = Delta("", finish_reason="stop")
        except BaseException as exc:  # an engine error, a timeout, or cancelled because the client left
            self.metrics.in_flight.dec()
            self.metrics.waiting.dec()
            await self._deltas.aclose()  # ends the gRPC stream: Triton cancels the request
            if isinstance(exc, ENGINE_ERRORS):
                raise as_api_error(exc) from exc
            if isinstance(exc, TimeoutError) and self.drain.expired:
                raise shutting_down() from exc
            if isinstance(exc, TimeoutError):
                raise timed_out(f"The engine sent no token within {self.first_token_timeout_s:g}s; "
                                "it is overloaded or not answering. Retry later.", "first_token_timeout") from exc
            raise
        self.first_token_s = time.perf_counter() - self.started
        self.metrics.waiting.dec()
        self.metrics.running.inc()
        self.metrics.time_to_first_token.observe(self.first_token_s)
        self.metrics.prompt_tokens.inc(self.prompt_tokens)
        if self.usage is not None:
            self.usage.prompt_tokens += self.prompt_tokens

    async def deltas(self) -> AsyncIterator[Delta]:
        """The deltas, the prefetched first included; raises APIError on an engine failure."""
        try:
            delta = self._first
            while delta is not None:
                self.completion_tokens += len(delta.token_ids)
                self.metrics.generation_tokens.inc(len(delta.token_ids))
                if self.usage is not None:
                    self.usage.completion_tokens += len(delta.token_ids)
                yield delta
                if delta.finish_reason is not None:
                    self.finish_reason = delta.finish_reason
                    return
                try:
                    delta = await self._next()
                except StopAsyncIteration:
                    return
                except ENGINE_ERRORS as exc:
                    raise as_api_error(exc) from exc
                except TimeoutError as exc:  # only the drain ends this wait
                    raise shutting_down() from exc
        finally:
            await self._deltas.aclose()
            self.metrics.in_flight.dec()
            self.metrics.running.dec()
            self.metrics.generation_finished(self.prompt_tokens, self.completion_tokens, self.first_token_s,
                                             time.perf_counter() - self.started, self.finish_reason)


async def client_gone(request: Request) -> None:
    """Returns once the client has closed its connection (the body must have been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and so the engine request) as soon as the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(client_gone(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        request.app.state.metrics.cancelled.inc()
        raise APIError(499, "client closed the request", "client_closed_request")
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
