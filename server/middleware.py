"""The gateway's one middleware, pure ASGI: admission checks on the request's scope, then request counting.

Pure ASGI (not Starlette's `BaseHTTPMiddleware`) so the route's own `receive` sees the client leave: a
streamed response notices the disconnect and a waiting non-streamed one is cancelled, which cancels the
engine request. It also keeps the per-chunk path free of the extra task and memory stream that
`BaseHTTPMiddleware` puts around every streamed body.

Admission checks run in order before any route parses the body (so a bad key is a 401, never a 400). A
check is `async def check(admission: Admission) -> None`; it rejects by raising `APIError` (sent in the
OpenAI error shape and counted like any response), may wrap `admission.receive` (to watch the body), may
register undo work on `admission.cleanup` (run once the response has ended, however it ended) and may
leave facts for the routes in `admission.state` (the request's `request.state`), and may add headers to the
response (`admission.response_headers`, e.g. rate-limit headers); `admission.status` is the response's status
once it has started (for cleanup work that records it).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.auth import KeyStore, check_authorization
from server.errors import APIError, error_response
from server.metrics import Metrics, route_label


@dataclass
class Admission:
    scope: Scope
    receive: Receive
    cleanup: AsyncExitStack
    status: int = 500  # what an exception before the response started becomes
    response_headers: list[tuple[str, str]] = field(default_factory=list)

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


# the admin key's routes (server/routes/lora.py), not a user's
ADMIN_PATHS = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})


def is_keyed(path: str) -> bool:
    """Routes that take the API key, and so count against its limits."""
    return (path.startswith("/v1") or path in KEYED_PATHS) and path not in ADMIN_PATHS


def api_key_check(keys: KeyStore) -> Check:
    async def require_api_key(admission: Admission) -> None:
        if is_keyed(admission.path):
            admission.state["key"] = check_authorization(keys, admission.header("authorization"))

    return require_api_key


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, checks: Sequence[Check], metrics: Metrics):
        self.app, self.checks, self.metrics = app, checks, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        admission = Admission(scope, receive, AsyncExitStack())

        async def send_noting_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                admission.status = message["status"]
                if admission.response_headers:
                    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in admission.response_headers]
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            async with admission.cleanup:
                try:
                    for check in self.checks:
                        await check(admission)
                except APIError as error:
                    await error_response(error)(scope, receive, send_noting_status)
                    return
                await self.app(scope, admission.receive, send_noting_status)
        finally:
            # Route templates, never raw paths: junk URLs cannot grow the label set.
            label = route_label(scope["app"].router.routes, scope) if "app" in scope else "unmatched"
            self.metrics.requests.labels(label, str(admission.status)).inc()
