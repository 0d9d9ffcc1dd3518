"""Serving TGI's native API on our engine: its parameters to engine requests, and its errors.

TGI's semantics kept: sampling only with `do_sample` or a sampling setting (temperature, top_k, top_p),
else greedy; a sampled request without a seed gets one, reported in `details.seed`; `truncate` keeps the
last tokens of the input; errors are `{"error", "error_type"}` (422 for validation) as TGI's clients parse.
`best_of` is the gateway's fan-out (server/choices.py: one engine request per sequence, each with its own
seed); `top_n_tokens` and `decoder_input_details` come from the raw logits rows (server/logprobs.py);
`adapter_id` names a served LoRA adapter, as a request's `model` does on /v1 (server/lora.py). The answers are
shaped in server/tgi_answers.py.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from server.choices import Choices, plans_for
from server.errors import APIError
from server.protocol import MAX_CHOICES, CompletionRequest
from server.protocols.tgi import GenerateParameters, GenerateRequest
from server.runner import GenerationRun
from server.sampling import output_budget, plan_generation
from server.tokenizer import Tokenizer

DEFAULT_MAX_NEW_TOKENS = 100  # TGI's default
MAX_BEST_OF = MAX_CHOICES  # /info's max_best_of: each is one engine request
MAX_TOP_N_TOKENS = 5  # TGI's default --max-top-n-tokens
REFUSED = {  # parameter → why it is refused (a clear 422, never ignored)
    "watermark": "watermark is not supported: this server does not watermark its outputs.",
    "typical_p": "typical_p is not supported by this server's samplers.",
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
    """TGI's router rules for the parameters it checks beyond their types, with its messages."""
    for name, message in REFUSED.items():
        value = getattr(parameters, name)
        if value not in (None, False, 0):
            raise APIError(400, message, param=name)
    best_of = parameters.best_of or 1
    if best_of > 1:
        if streaming:
            raise APIError(400, "`best_of` != 1 is not supported when streaming tokens", param="best_of")
        if best_of > MAX_BEST_OF:
            raise APIError(400, f"`best_of` must be > 0 and <= {MAX_BEST_OF}. Given: {best_of}", param="best_of")
        if not samples(parameters):
            raise APIError(400, "you must use sampling when `best_of` is > 1 (do_sample, or a temperature other "
                                "than 1, top_k or top_p): greedy sequences would all be the same", param="best_of")
        if parameters.seed is not None:
            raise APIError(400, "`seed` must not be set when `best_of` > 1", param="seed")
    if parameters.decoder_input_details and streaming:
        raise APIError(400, "`decoder_input_details` == true is not supported when streaming tokens",
                       param="decoder_input_details")
    top_n = parameters.top_n_tokens or 0
    if top_n > MAX_TOP_N_TOKENS:
        raise APIError(400, f"`top_n_tokens` must be >= 0 and <= {MAX_TOP_N_TOKENS}. Given: {top_n}",
                       param="top_n_tokens")


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


def model_of(adapter_id: str | None, served) -> str:
    """The model a request runs on: the base without `adapter_id` (or naming the base), else the served adapter.
    TGI's server runs an adapter it does not know on the base model; that silent change of model is refused here."""
    if adapter_id is None or adapter_id == served.name or adapter_id in served.aliases:
        return served.name
    adapters = served.adapters
    if adapters is None or adapter_id not in adapters:
        known = sorted(adapter.name for adapter in adapters.list()) if adapters is not None else []
        offer = (f"the served adapters are {', '.join(known)}" if known
                 else "this server serves no LoRA adapters (start it with --lora NAME=PATH)")
        raise APIError(400, f"adapter_id '{adapter_id}' is not a served LoRA adapter: {offer}.", param="adapter_id")
    return adapter_id


def samples(parameters: GenerateParameters) -> bool:
    """TGI samples when asked to or when any sampling setting differs from its neutral value."""
    return parameters.do_sample or any((
        parameters.temperature not in (None, 1.0), parameters.top_k is not None, parameters.top_p is not None))


@dataclass
class TgiGeneration:
    """One TGI request's engine requests: one, or best_of sampled ones (the gateway's fan-out)."""

    runs: list[GenerationRun]
    seeds: list[int | None]  # each run's seed, reported in its details
    prompt_ids: list[int]
    return_full_text: bool
    inputs: str
    top_n_tokens: int = 0
    prefill: bool = False  # decoder_input_details: the prompt's tokens with their logprobs

    @property
    def run(self) -> GenerationRun:
        return self.runs[0]


def plan(body: GenerateRequest, request: Request, streaming: bool) -> TgiGeneration:
    state, parameters = request.app.state, body.parameters
    refuse_unsupported(parameters, streaming)
    model = model_of(parameters.adapter_id, state.model)
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
        model=model, prompt=prompt_ids, max_tokens=max_tokens, stop=parameters.stop or None,
        temperature=(parameters.temperature or 1.0) if sampling else 0.0, top_p=parameters.top_p,
        top_k=parameters.top_k, seed=seed, repetition_penalty=parameters.repetition_penalty,
        frequency_penalty=parameters.frequency_penalty or 0.0)
    generation = plan_generation(fields, prompt_ids, tokenizer, max_tokens, return_log_probs=True)
    if parameters.grammar is not None:
        generation.request.guide_type, generation.request.guide = guide_of(parameters.grammar)
    top_n = parameters.top_n_tokens or 0
    generation.request.return_generation_logits = top_n > 0  # top tokens come from the raw logits rows
    plans = plans_for(generation, Choices(1, parameters.best_of or 1), fields)
    plans[0].request.return_context_logits = parameters.decoder_input_details  # once: the prompt is shared
    seeds = [p.request.random_seed if sampling else None for p in plans]
    return TgiGeneration([GenerationRun(request, p, len(prompt_ids)) for p in plans], seeds, prompt_ids,
                         bool(parameters.return_full_text), body.inputs, top_n, parameters.decoder_input_details)


def finish_reason(reason: str | None, last_token: int | None, tokenizer: Tokenizer) -> str:
    if reason == "length":
        return "length"
    return "eos_token" if last_token is not None and last_token == tokenizer.eos_token_id else "stop_sequence"
