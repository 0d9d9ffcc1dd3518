"""Text Generation Inference's native routes: POST /generate, /generate_stream and / (either, by `stream`),
GET /info. The generation routes take the API key as /v1 does (server/middleware.py); /info is open, as TGI's."""
from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import metadata

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from server import tgi, tgi_answers
from server.errors import APIError
from server.protocols.tgi import GenerateRequest, Info, StreamResponse, Token
from server.runner import unless_disconnected

router = APIRouter()


@router.post("/generate")
async def generate(request: Request):
    try:
        body = await tgi.parse_generate(request)
        return await _generate(body, request)
    except APIError as error:
        return tgi.tgi_error(error)


@router.post("/generate_stream")
async def generate_stream(request: Request):
    try:
        body = await tgi.parse_generate(request)
        return await _generate_stream(body, request)
    except APIError as error:
        return tgi.tgi_error(error)


@router.post("/")
async def compat_generate(request: Request):
    """TGI's `/`: huggingface_hub's InferenceClient posts here when given the server's URL."""
    try:
        body = await tgi.parse_generate(request)
        if body.stream:
            return await _generate_stream(body, request)
        answer = await _generate(body, request)
        return [answer]  # a list, as TGI's compat route answers
    except APIError as error:
        return tgi.tgi_error(error)


async def _generate(body: GenerateRequest, request: Request) -> dict:
    generation = tgi.plan(body, request, streaming=False)
    details = body.parameters.details or body.parameters.decoder_input_details
    return await unless_disconnected(request, tgi_answers.complete(generation, details,
                                                                   request.app.state.tokenizer))


async def _generate_stream(body: GenerateRequest, request: Request) -> StreamingResponse:
    generation = tgi.plan(body, request, streaming=True)
    await generation.run.start()
    return StreamingResponse(_events(generation, body.parameters.details, request.app.state.tokenizer),
                             media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


async def _events(generation: tgi.TgiGeneration, details: bool, tokenizer) -> AsyncIterator[str]:
    """One event per token; a delta's text rides on its last token (earlier ones carry ""), so the
    tokens' texts always add up to the generated text, stop strings applied. The last event carries
    `generated_text` (and `details` when asked), as TGI's."""
    index, text, last = 0, [], None
    try:
        async for delta in generation.run.deltas():
            text.append(delta.text)
            if delta.token_ids:
                events = _token_events(delta, index, tokenizer,
                                       tgi_answers.stream_top_tokens(generation, delta, tokenizer))
            else:  # an empty last response: its text (a flushed tail) rides on a repeat of the last token
                events = [StreamResponse(index=index + 1, token=Token(id=last if last is not None else 0,
                                                                      text=delta.text, logprob=None, special=True))]
            index, last = events[-1].index, events[-1].token.id
            if delta.finish_reason is not None:
                generated = "".join(text)
                events[-1].generated_text = generation.inputs + generated if generation.return_full_text else generated
                if details:
                    events[-1].details = tgi_answers.stream_details(generation, delta.finish_reason, last,
                                                                    tokenizer)
            for event in events:  # top_tokens is left out when not asked for, as TGI does
                yield f"data:{event.model_dump_json(exclude=None if event.top_tokens else {'top_tokens'})}\n\n"
    except APIError as error:
        yield tgi.stream_error(error)


def _token_events(delta, index: int, tokenizer, top: list[list[Token]] | None) -> list[StreamResponse]:
    logprobs = delta.logprobs or [None] * len(delta.token_ids)
    final = len(delta.token_ids) - 1
    return [StreamResponse(index=index + 1 + position,
                           token=tgi_answers.token(tokenizer, token_id, logprob,
                                                   delta.text if position == final else ""),
                           top_tokens=top[position] if top else None)
            for position, (token_id, logprob) in enumerate(zip(delta.token_ids, logprobs, strict=False))]


@router.get("/info")
async def info(request: Request) -> JSONResponse:
    model = request.app.state.model
    return JSONResponse(Info(model_id=model.name, max_concurrent_requests=128, max_best_of=tgi.MAX_BEST_OF,
                             max_input_tokens=model.max_model_len - 1, max_total_tokens=model.max_model_len,
                             version=_version()).model_dump())


def _version() -> str:
    try:
        return metadata.version("ingot")
    except metadata.PackageNotFoundError:
        return "0.1.0"
