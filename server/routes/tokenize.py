"""vLLM's POST /tokenize and /detokenize and GET /version; TGI's POST /tokenize shares the path.

The two /tokenize bodies differ: TGI's carries `inputs`, vLLM's `prompt` or `messages`. Both need the API key
as /v1 does (server/middleware.py KEYED_PATHS); /version is open.
"""
from __future__ import annotations

from importlib import metadata

from fastapi import APIRouter, Request
from pydantic import ValidationError

from server import tgi
from server.errors import APIError, bad_request
from server.protocols.tgi import GenerateRequest, SimpleToken
from server.protocols.tokenize import (DetokenizeRequest, DetokenizeResponse, TokenizeChatRequest,
                                       TokenizeCompletionRequest, TokenizeResponse)
from server.sampling import check_model

router = APIRouter()


@router.get("/version")
async def version() -> dict:
    try:
        return {"version": metadata.version("ingot")}
    except metadata.PackageNotFoundError:
        return {"version": "0.1.0"}


@router.post("/tokenize")
async def tokenize(request: Request):
    try:
        payload = await request.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict) and "inputs" in payload:
        try:
            return _tgi_tokenize(payload, request)
        except APIError as error:
            return tgi.tgi_error(error)
    return _vllm_tokenize(payload, request)


def _tgi_tokenize(payload: dict, request: Request) -> list[SimpleToken]:
    try:
        body = GenerateRequest.model_validate(payload)
    except ValidationError as exc:
        raise APIError(400, f"Input validation error: {exc.errors()[0].get('msg')}") from exc
    text = body.inputs
    return [SimpleToken(id=token_id, text=text[start:stop], start=start, stop=stop)
            for token_id, start, stop in request.app.state.tokenizer.encode_with_offsets(text)]


def _vllm_tokenize(payload, request: Request) -> TokenizeResponse:
    state = request.app.state
    kind = TokenizeChatRequest if isinstance(payload, dict) and "messages" in payload else TokenizeCompletionRequest
    try:
        body = kind.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first.get("loc", ())) or None
        raise bad_request(f"Invalid value for '{param}': {first.get('msg')}", param) from exc
    if body.model is not None:
        check_model(body.model, state.model)
    if isinstance(body, TokenizeChatRequest):
        messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                    for m in body.messages]
        ids = state.tokenizer.apply_chat_template(messages, body.add_generation_prompt)
        prefix = state.tokenizer.encode_plain("", True)  # e.g. [BOS]: what add_special_tokens puts first
        if body.add_special_tokens and ids[: len(prefix)] != prefix:
            ids = prefix + ids
    else:
        ids = state.tokenizer.encode_plain(body.prompt, body.add_special_tokens)
    strs = [state.tokenizer.token_text(t) for t in ids] if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=state.model.max_model_len, tokens=ids, token_strs=strs)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    state = request.app.state
    if body.model is not None:
        check_model(body.model, state.model)
    bad = [t for t in body.tokens if not 0 <= t < state.tokenizer.vocab_size]
    if bad:
        raise bad_request(f"Token ids out of the vocabulary (size {state.tokenizer.vocab_size}): {bad[:5]}", "tokens")
    return DetokenizeResponse(prompt=state.tokenizer.decode(body.tokens, skip_special_tokens=False))
