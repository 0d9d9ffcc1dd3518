"""Amazon SageMaker's container contract: GET /ping and POST /invocations.

/invocations takes what TGI's SageMaker image takes: TGI's body (`inputs`, `parameters`, `stream`), or with the
messages API (as TGI with MESSAGES_API_ENABLED=true) a chat body with `messages`, or a completions body with
`prompt`; the answer is that API's. A missing `model` means the served model. SageMaker puts its own IAM auth in
front of the container and sends no API key: serve there with INGOT_ALLOW_ANONYMOUS=1, or keys apply as on /v1.
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from server.errors import bad_request
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.routes import chat, completions, tgi

router = APIRouter()


@router.get("/ping")
async def ping(request: Request) -> Response:
    if await request.app.state.engine.is_ready():
        return Response(status_code=200)
    return JSONResponse({"error": "the engine is not ready", "error_type": "unhealthy"}, status_code=503)


@router.post("/invocations")
async def invocations(request: Request):
    try:
        payload = await request.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise bad_request("The body must be a JSON object: TGI's (inputs), a chat (messages) or a completion "
                          "(prompt) request.")
    if "inputs" in payload:
        return await tgi.compat_generate(request)
    model = request.app.state.model
    payload = {**payload, "model": model.name if payload.get("model") in (None, *model.aliases) else payload["model"]}
    kind, route = ((ChatCompletionRequest, chat.chat_completions) if "messages" in payload
                   else (CompletionRequest, completions.completions))
    try:
        body = kind.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first.get("loc", ())) or None
        raise bad_request(f"Invalid value for '{param}': {first.get('msg')}", param) from exc
    return await route(body, request)
