"""Serving TGI's native API on our engine: its parameters to one generation plan, its answers and errors.

TGI's semantics kept: sampling only with `do_sample` or a sampling setting (temperature, top_k, top_p),
else greedy; a sampled request without a seed gets one, reported in `details.seed`; `truncate` keeps the
last tokens of the input; errors are `{"error", "error_type"}` (422 for validation) as TGI's clients parse.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from server.errors import APIError
from server.protocol import CompletionRequest
from server.protocols.tgi import Details, GenerateParameters, GenerateRequest, StreamDetails, Token
from server.runner import GenerationRun
from server.sampling import output_budget, plan_generation
from server.tokenizer import Tokenizer

DEFAULT_MAX_NEW_TOKENS = 100  # TGI's default
REFUSED = {  # parameter → why it is refused (a clear 422, never ignored)
    "watermark": "watermark is not supported: this server does not watermark its outputs.",
    "adapter_id": "adapter_id is not supported: this server serves no LoRA adapters.",
    "typical_p": "typical_p is not supported by this server's samplers.",
    "decoder_input_details": "decoder_input_details is not supported yet: the engine returns no prompt "
                             "logprobs.",
    "top_n_tokens": "top_n_tokens is not supported yet: the engine returns no alternative tokens.",
}
ERROR_TYPES = {400: "validation", 401: "authentication", 404: "validation", 413: "validation",
               429: "overloaded", 499: "cancelled", 503: "unavailable"}


def tgi_status(error: APIError) -> int:
    """TGI answers 422 where OpenAI answers 400 (and for an unknown model), 424 for a generation error."""
    if error.status in (400, 404):
        return 422
    return 424 if error.status == 500 else error.status


def tgi_error(error: APIError) -> JSONResponse:
    body = {"error": error.message, "error_type": ERROR_TYPES.get(error.status, "generation")}
    headers = dict(error.headers)
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=tgi_status(error), headers=headers)


def stream_error(error: APIError) -> str:
    body = {"error": error.message, "error_type": ERROR_TYPES.get(error.status, "generation")}
    return f"data:{json.dumps(body, ensure_ascii=False)}\n\n"


async def parse_generate(request: Request) -> GenerateRequest:
    """The body, or an APIError that the route sends in TGI's error shape (the key was checked before)."""
    try:
        payload = await request.json()
    except ValueError as exc:
        raise APIError(400, "The request body is not valid JSON.") from exc
    try:
        return GenerateRequest.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise APIError(400, f"Input validation error: {where}: {first.get('msg')}") from exc


def refuse_unsupported(parameters: GenerateParameters, streaming: bool) -> None:
    for name, message in REFUSED.items():
        value = getattr(parameters, name)
        if value not in (None, False, 0):
            raise APIError(400, message, param=name)
    if (parameters.best_of or 1) > 1:
        if streaming:
            raise APIError(400, "best_of > 1 is not supported when streaming.", param="best_of")
        raise APIError(400, "best_of > 1 is not supported yet.", param="best_of")


def guide_of(grammar) -> tuple[str, str]:
    """TGI's `grammar` as the contract's guided decoding: {"type": "json", "value": a JSON schema (object or
    text)} or {"type": "regex", "value": a regular expression}."""
    if not isinstance(grammar, dict) or grammar.get("type") not in ("json", "regex") or "value" not in grammar:
        raise APIError(400, 'grammar must be {"type": "json", "value": <JSON schema>} or '
                            '{"type": "regex", "value": "<regular expression>"}.', param="grammar")
    value = grammar["value"]
    if grammar["type"] == "regex":
        if not isinstance(value, str) or not value:
            raise APIError(400, "A regex grammar's value must be a non-empty string.", param="grammar")
        return "regex", value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise APIError(400, f"A json grammar's value is not valid JSON: {exc}", param="grammar") from exc
    if not isinstance(value, dict):
        raise APIError(400, "A json grammar's value must be a JSON schema (an object).", param="grammar")
    return "json_schema", json.dumps(value)


def samples(parameters: GenerateParameters) -> bool:
    """TGI samples when asked to or when any sampling setting differs from its neutral value."""
    return parameters.do_sample or any((
        parameters.temperature not in (None, 1.0), parameters.top_k is not None, parameters.top_p is not None))


@dataclass
class TgiGeneration:
    run: GenerationRun
    prompt_ids: list[int]
    seed: int | None
    return_full_text: bool
    inputs: str


def plan(body: GenerateRequest, request: Request, streaming: bool) -> TgiGeneration:
    state, parameters = request.app.state, body.parameters
    refuse_unsupported(parameters, streaming)
    if not body.inputs:
        raise APIError(400, "`inputs` must not be empty.", param="inputs")
    tokenizer: Tokenizer = state.tokenizer
    prompt_ids = tokenizer.encode(body.inputs)
    if parameters.truncate is not None:
        prompt_ids = prompt_ids[-parameters.truncate:]
    sampling = samples(parameters)
    seed = parameters.seed if parameters.seed is not None else (secrets.randbits(63) if sampling else None)
    requested = parameters.max_new_tokens
    if requested == 0:
        raise APIError(400, "max_new_tokens must be at least 1.", param="max_new_tokens")
    max_tokens = output_budget(requested, len(prompt_ids), state.model.max_model_len, "inputs")
    if requested is None:
        max_tokens = min(max_tokens, DEFAULT_MAX_NEW_TOKENS)
    fields = CompletionRequest(
        model=state.model.name, prompt=prompt_ids, max_tokens=max_tokens, stop=parameters.stop or None,
        temperature=(parameters.temperature or 1.0) if sampling else 0.0, top_p=parameters.top_p,
        top_k=parameters.top_k, seed=seed, repetition_penalty=parameters.repetition_penalty,
        frequency_penalty=parameters.frequency_penalty or 0.0)
    generation = plan_generation(fields, prompt_ids, tokenizer, max_tokens, return_log_probs=True)
    if parameters.grammar is not None:
        generation.request.guide_type, generation.request.guide = guide_of(parameters.grammar)
    return TgiGeneration(GenerationRun(request, generation, len(prompt_ids)), prompt_ids, seed,
                         bool(parameters.return_full_text), body.inputs)


def finish_reason(reason: str | None, last_token: int | None, tokenizer: Tokenizer) -> str:
    if reason == "length":
        return "length"
    return "eos_token" if last_token is not None and last_token == tokenizer.eos_token_id else "stop_sequence"


def tokens(tokenizer: Tokenizer, ids: list[int], logprobs: list[float] | None) -> list[Token]:
    special = tokenizer.special_ids
    logprobs = logprobs or [None] * len(ids)
    return [Token(id=i, text=tokenizer.token_text(i), logprob=lp, special=i in special)
            for i, lp in zip(ids, logprobs, strict=False)]


async def complete(generation: TgiGeneration, details: bool, tokenizer: Tokenizer) -> dict:
    await generation.run.start()
    text, ids, logprobs, reason = [], [], [], None
    async for delta in generation.run.deltas():
        text.append(delta.text)
        ids.extend(delta.token_ids)
        logprobs.extend(delta.logprobs or [])
        reason = delta.finish_reason or reason
    generated = "".join(text)
    out: dict = {"generated_text": generation.inputs + generated if generation.return_full_text else generated}
    if details:
        out["details"] = Details(
            finish_reason=finish_reason(reason, ids[-1] if ids else None, tokenizer),
            generated_tokens=generation.run.completion_tokens, seed=generation.seed,
            tokens=tokens(tokenizer, ids, logprobs)).model_dump()
    return out


def stream_details(generation: TgiGeneration, reason: str, last: int | None, tokenizer: Tokenizer) -> StreamDetails:
    return StreamDetails(finish_reason=finish_reason(reason, last, tokenizer),
                         generated_tokens=generation.run.completion_tokens, seed=generation.seed,
                         input_length=len(generation.prompt_ids))
