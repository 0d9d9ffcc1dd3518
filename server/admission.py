"""Admission control: the checks the gateway's middleware runs before a route sees a request.

In order, after the API key (server/middleware.py): the body size (413, counted while the body is read, never
buffered past the limit), requests in flight in this worker (429 instead of an unbounded queue), the key's
own limits and quota (429, server/limits.py). Every /v1 response of a limited key carries OpenAI's
x-ratelimit-* headers; every /v1 request is recorded per key id (Prometheus, usage log) once it has ended.
"""
from __future__ import annotations

import logging
import time

from starlette.types import Message

from server.auth import ANONYMOUS, KeyInfo
from server.errors import APIError, bad_request
from server.metrics import Metrics, route_label
from server.middleware import Admission, Check, is_keyed
from server.usage import RequestUsage, UsageLog, usage_record

log = logging.getLogger("ingot.gateway")
OVERLOADED_RETRY_S = 1


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than this server accepts ({limit} bytes).",
                    "invalid_request_error", None, "request_too_large")


def body_size_check(max_bytes: int, metrics: Metrics) -> Check:
    """413 on a Content-Length over the limit, else reads the body up to the limit and replays it to the route."""

    async def limit_body(admission: Admission) -> None:
        declared = admission.header("content-length")
        if declared.isdigit() and int(declared) > max_bytes:
            metrics.rejected.labels("body_too_large").inc()
            raise body_too_large(max_bytes)
        if admission.scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return
        messages, size = [], 0
        while True:
            message = await admission.receive()
            if message["type"] != "http.request":  # the client left while sending: nothing to answer
                raise APIError(499, "The client closed the request.", "client_closed_request")
            messages.append(message)
            size += len(message.get("body", b""))
            if size > max_bytes:  # chunked bodies have no Content-Length: stop reading here
                metrics.rejected.labels("body_too_large").inc()
                raise body_too_large(max_bytes)
            if not message.get("more_body", False):
                break
        admission.receive = _replay(messages, admission.receive)

    return limit_body


def _replay(messages: list[Message], receive):
    """The body in one message, then the client's own messages (a disconnect, for the route to notice)."""
    pending = [{"type": "http.request", "body": b"".join(m.get("body", b"") for m in messages), "more_body": False}]

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


def in_flight_check(max_in_flight: int, metrics: Metrics) -> Check:
    """429 with Retry-After once this worker holds `max_in_flight` POST requests of keyed routes."""
    in_flight = 0

    async def limit_in_flight(admission: Admission) -> None:
        nonlocal in_flight
        if admission.scope["method"] != "POST" or not is_keyed(admission.path):
            return
        if in_flight >= max_in_flight:
            metrics.rejected.labels("overloaded").inc()
            raise APIError(429, "The server is at capacity; please try again shortly.", "server_overloaded", None,
                           "server_overloaded", headers={"Retry-After": str(OVERLOADED_RETRY_S)})
        in_flight += 1

        async def done() -> None:
            nonlocal in_flight
            in_flight -= 1

        admission.cleanup.push_async_callback(done)

    return limit_in_flight


def key_limits_check(limiter, metrics: Metrics, usage_log: UsageLog | None) -> Check:
    """The key's limits (429) and, once the request has ended, its usage recorded and charged."""

    async def limit_key(admission: Admission) -> None:
        if not is_keyed(admission.path):
            return
        key: KeyInfo = admission.state.get("key", ANONYMOUS)
        usage = admission.state["usage"] = RequestUsage()
        started, grant = time.time(), None
        if key.limits.limited:
            try:
                grant = await limiter.admit(key.id, key.limits)
            except APIError as error:
                reason = "quota" if error.code == "insufficient_quota" else "rate_limited"
                metrics.rejected.labels(reason).inc()
                metrics.key_rate_limited.labels(key.id, error.type).inc()
                _record(admission, key, usage, started, error.status, metrics, usage_log)
                raise
            admission.response_headers.extend(grant.headers().items())

        async def finish() -> None:
            _record(admission, key, usage, started, admission.status, metrics, usage_log)
            if grant is not None:
                used = await limiter.release(grant, usage.total_tokens)
                soft = key.limits.quota_soft
                if soft is not None and used >= soft > used - usage.total_tokens:
                    log.warning("key %s passed its soft quota: %d of %d tokens this %s", key.id, used, soft,
                                key.limits.quota_period)
                if soft is not None and used >= soft:
                    metrics.key_quota_soft_exceeded.labels(key.id).inc()

        admission.cleanup.push_async_callback(finish)

    return limit_key


def _record(admission: Admission, key: KeyInfo, usage: RequestUsage, started: float, status: int,
            metrics: Metrics, usage_log: UsageLog | None) -> None:
    metrics.key_requests.labels(key.id, str(status)).inc()
    if usage.prompt_tokens:
        metrics.key_prompt_tokens.labels(key.id).inc(usage.prompt_tokens)
    if usage.completion_tokens:
        metrics.key_completion_tokens.labels(key.id).inc(usage.completion_tokens)
    if usage_log is not None:
        scope = admission.scope
        route = route_label(scope["app"].router.routes, scope) if "app" in scope else scope["path"]
        usage_log.write(usage_record(key.id, scope["method"], route, status, usage, started,
                                     admission.header("x-request-id")))


def check_prompt_count(count: int, limit: int, param: str = "prompt") -> None:
    """A 400 before any tokenizing when one request carries more prompts than the server takes."""
    if count > limit:
        raise bad_request(f"Too many prompts in one request: {count}; this server takes at most {limit}. "
                          "Split them over several requests.", param, "too_many_prompts")
