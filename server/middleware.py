"""The gateway's one middleware, pure ASGI: admission checks on the request's scope, then request counting.

Pure ASGI (not Starlette's `BaseHTTPMiddleware`) so the route's own `receive` sees the client leave: a
streamed response notices the disconnect and a waiting non-streamed one is cancelled, which cancels the
engine request. It also keeps the per-chunk path free of the extra task and memory stream that
`BaseHTTPMiddleware` puts around every streamed body.

Admission checks run in order before any route parses the body (so a bad key is a 401, never a 400). A
check is `async def check(admission: Admission) -> None`; it rejects by raising `APIError` (sent in the
OpenAI error shape and counted like any response), may wrap `admission.receive` (to watch the body), may
register undo work on `admission.cleanup` (run once the response has ended, however it ended) and may
leave facts for the routes in `admission.state` (the request's `request.state`).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.auth import KeyStore, check_authorization
from server.errors import APIError, error_response
from server.metrics import Metrics


@dataclass
class Admission:
    scope: Scope
    receive: Receive
    cleanup: AsyncExitStack

    @property
    def path(self) -> str:
        return self.scope["path"]

    @property
    def state(self) -> dict:
        return self.scope.setdefault("state", {})

    def header(self, name: str) -> str:
        """The first value of a request header (`name` in lower case), '' when absent."""
        wanted = name.encode("latin-1")
        for key, value in self.scope["headers"]:
            if key == wanted:
                return value.decode("latin-1")
        return ""


Check = Callable[[Admission], Awaitable[None]]


# Routes outside /v1 that generate or use the tokenizer (TGI's, SageMaker's, vLLM's) take the key as well;
# /info, /ping, /version, /health, /ready and /metrics stay open, as in TGI and vLLM.
KEYED_PATHS = frozenset({"/", "/generate", "/generate_stream", "/invocations", "/tokenize", "/detokenize"})


def api_key_check(keys: KeyStore) -> Check:
    async def require_api_key(admission: Admission) -> None:
        if admission.path.startswith("/v1") or admission.path in KEYED_PATHS:
            check_authorization(keys, admission.header("authorization"))

    return require_api_key


def route_label(path: str, status: int) -> str:
    if status == 404:
        return "unknown"
    return path if path.startswith("/v1/") else "other"


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, checks: Sequence[Check], metrics: Metrics):
        self.app, self.checks, self.metrics = app, checks, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what an exception before the response started becomes

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            async with AsyncExitStack() as cleanup:
                admission = Admission(scope, receive, cleanup)
                try:
                    for check in self.checks:
                        await check(admission)
                except APIError as error:
                    await error_response(error)(scope, receive, send_noting_status)
                    return
                await self.app(scope, admission.receive, send_noting_status)
        finally:
            self.metrics.requests.labels(route_label(scope["path"], status), str(status)).inc()
