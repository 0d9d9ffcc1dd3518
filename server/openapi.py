"""The gateway's OpenAPI document says which errors each route really answers, in OpenAI's error shape.

FastAPI documents a 422 for every route with a body; the OpenAI routes answer 400 instead (server/errors.py),
and every keyed route may also answer 401, 413 or 429 from the middleware (server/admission.py). TGI's routes
and vLLM's tokenizer routes keep their own 422 beside the 400s they answer.
"""
from __future__ import annotations

from fastapi import FastAPI

from server.middleware import ADMIN_PATHS, is_keyed

ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": "string", "nullable": True}, "code": {"type": "string", "nullable": True}},
    }},
}
DESCRIPTIONS = {
    400: "Invalid request: malformed JSON, a field out of range or not Unicode text, a prompt over the context.",
    401: "Missing or wrong API key.",
    403: "The key may not call this route (the admin routes take the admin key).",
    404: "The model does not exist.",
    422: "Invalid request, in TGI's error shape (TGI's routes).",
    413: "The request body is larger than the server accepts.",
    429: "Over the key's rate limit or quota, or the gateway is at capacity; see Retry-After.",
    503: "The engine is not reachable or not ready; see Retry-After.",
    504: "The engine did not answer within the request's deadline.",
}
ENGINE_PATHS = ("/generate", "/generate_stream", "/", "/invocations")


def error_statuses(path: str, method: str) -> list[int]:
    statuses = []
    if is_keyed(path):
        statuses += [401, 429]
    if path in ADMIN_PATHS:  # the admin key's routes (server/routes/lora.py)
        statuses += [401, 403]
    if method in ("post", "put", "patch"):
        statuses.append(413)
    if path.startswith("/v1/"):
        statuses.append(400)
        if method == "post" or "{" in path:
            statuses.append(404)
        if method == "post":
            statuses += [503, 504]
    elif is_keyed(path) and method == "post":  # TGI's, SageMaker's and vLLM's own routes
        statuses += [400, 404, 422] + ([503, 504] if path in ENGINE_PATHS else [])
    elif path == "/ready":
        statuses.append(503)
    return sorted(statuses)


def document_error_statuses(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        reference = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                if path.startswith("/v1/"):
                    responses.pop("422", None)  # validation errors are 400s here
                for status in error_statuses(path, method):
                    responses[str(status)] = {"description": DESCRIPTIONS[status], "content": reference}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
