"""POST /v1/completions."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from server import sse
from server.errors import APIError, bad_request
from server.protocol import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, Usage, new_id
from server.runner import GenerationRun, unless_disconnected
from server.sampling import check_model, check_supported, output_budget, plan_generation
from server.structured_outputs import apply_guide, check_engine_supports, request_fields_guide
from server.tokenizer import Tokenizer

router = APIRouter()


def prompts_of(body: CompletionRequest, tokenizer: Tokenizer) -> list[list[int]]:
    """The request's prompts as token ids: a string, a list of strings, ids, or a list of id lists."""
    prompt = body.prompt
    if isinstance(prompt, str):
        prompts = [tokenizer.encode(prompt)]
    elif prompt and all(isinstance(item, int) for item in prompt):
        prompts = [list(prompt)]
    else:
        prompts = [tokenizer.encode(item) if isinstance(item, str) else list(item) for item in prompt]
    if not prompts or any(not ids for ids in prompts):
        raise bad_request("The prompt must not be empty.", "prompt")
    for ids in prompts:
        bad = [t for t in ids if not 0 <= t < tokenizer.vocab_size]
        if bad:
            raise bad_request(f"Token ids out of the vocabulary (size {tokenizer.vocab_size}): {bad[:5]}", "prompt")
    return prompts


def _logprobs(tokenizer: Tokenizer, token_ids: list[int], logprobs: list[float], offset: int,
              want_top: bool) -> CompletionLogprobs:
    tokens = [tokenizer.token_text(t) for t in token_ids]
    offsets, position = [], offset
    for token in tokens:
        offsets.append(position)
        position += len(token)
    top = [{token: logprob} for token, logprob in zip(tokens, logprobs, strict=False)] if want_top else None
    return CompletionLogprobs(tokens=tokens, token_logprobs=list(logprobs), top_logprobs=top, text_offset=offsets)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    state = request.app.state
    check_model(body.model, state.model.name)
    check_supported(body)
    if body.suffix:
        raise bad_request("suffix is not supported.", "suffix", "unsupported_parameter")
    if body.best_of not in (None, 1):
        raise bad_request("Only best_of=1 is supported.", "best_of", "unsupported_parameter")
    if body.logprobs is not None and body.logprobs > 1:
        raise bad_request("logprobs above 1 are not supported.", "logprobs", "unsupported_parameter")
    if body.tools:
        raise bad_request("tools are for /v1/chat/completions.", "tools", "unsupported_parameter")
    guide = request_fields_guide(body)
    check_engine_supports(guide, state.model.engine)
    prompts = prompts_of(body, state.tokenizer)
    if body.stream and len(prompts) > 1:
        raise bad_request("Streaming takes one prompt per request.", "prompt")
    runs = []
    for ids in prompts:
        max_tokens = output_budget(body.max_tokens if body.max_tokens is not None else 16, len(ids),
                                   state.model.max_model_len, "prompt")
        plan = plan_generation(body, ids, state.tokenizer, max_tokens, return_log_probs=body.logprobs is not None)
        apply_guide(plan, guide)
        runs.append(GenerationRun(request, plan, len(ids)))
    if body.stream:
        await unless_disconnected(request, runs[0].start())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(runs[0], body, state, include_usage), media_type="text/event-stream")
    return await unless_disconnected(request, _complete_all(runs, body, state))


async def _complete_one(index: int, run: GenerationRun, body: CompletionRequest, state) -> CompletionChoice:
    await run.start()
    prefix = state.tokenizer.decode(run.plan.request.input_ids) if body.echo else ""
    text, token_ids, logprobs, finish_reason = [prefix], [], [], None
    async for delta in run.deltas():
        text.append(delta.text)
        token_ids.extend(delta.token_ids)
        logprobs.extend(delta.logprobs or [])
        finish_reason = delta.finish_reason or finish_reason
    choice_logprobs = None
    if body.logprobs is not None:
        choice_logprobs = _logprobs(state.tokenizer, token_ids, logprobs, len(prefix), body.logprobs >= 1)
    return CompletionChoice(index=index, text="".join(text), logprobs=choice_logprobs, finish_reason=finish_reason)


async def _complete_all(runs: list[GenerationRun], body: CompletionRequest, state) -> Completion:
    choices = await asyncio.gather(*(_complete_one(i, run, body, state) for i, run in enumerate(runs)))
    usage = Usage.of(sum(r.prompt_tokens for r in runs), sum(r.completion_tokens for r in runs))
    return Completion(id=new_id("cmpl"), model=state.model.name, choices=list(choices), usage=usage)


async def _stream(run: GenerationRun, body: CompletionRequest, state, include_usage: bool) -> AsyncIterator[str]:
    chunk_id, model = new_id("cmpl"), state.model.name

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        return sse.event(Completion(id=chunk_id, model=model, choices=choices, usage=usage))

    offset = 0
    if body.echo:
        prefix = state.tokenizer.decode(run.plan.request.input_ids)
        offset = len(prefix)
        yield chunk([CompletionChoice(text=prefix)])
    try:
        async for delta in run.deltas():
            if not (delta.text or delta.finish_reason or delta.logprobs):
                continue
            logprobs = None
            if body.logprobs is not None and delta.logprobs:
                logprobs = _logprobs(state.tokenizer, delta.token_ids, delta.logprobs, offset, body.logprobs >= 1)
            offset += len(delta.text)
            yield chunk([CompletionChoice(text=delta.text, logprobs=logprobs, finish_reason=delta.finish_reason)])
    except APIError as error:
        yield sse.event(error.body())
        yield sse.DONE
        return
    if include_usage:
        yield chunk([], Usage.of(run.prompt_tokens, run.completion_tokens))
    yield sse.DONE
