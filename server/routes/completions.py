"""POST /v1/completions."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from server import logprobs, sse
from server.choices import Choices, Collected, choices_of, chosen, collect, merged, plans_for
from server.admission import check_prompt_count
from server.errors import APIError, bad_request
from server.generation import GenerationPlan
from server.protocol import Completion, CompletionChoice, CompletionRequest, Usage, new_id
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


@dataclass
class PromptRuns:
    """One prompt's engine requests: its n (or best_of) choices, or its beam search."""

    ids: list[int]
    plan: GenerationPlan
    runs: list[GenerationRun]


def _plan_prompt(request: Request, body: CompletionRequest, ids: list[int], choices: Choices, guide) -> PromptRuns:
    state = request.app.state
    requested = requested_tokens(body)
    # max_tokens 0 (with echo) scores the prompt: the engine makes one token, which is dropped.
    max_tokens = output_budget(max(requested, 1), len(ids), state.model.max_model_len, "prompt")
    plan = plan_generation(body, ids, state.tokenizer, max_tokens, return_log_probs=body.logprobs is not None)
    apply_guide(plan, guide)
    plan.request.return_generation_logits = bool(body.logprobs) and requested > 0
    plans = plans_for(plan, choices, body)
    plans[0].request.return_context_logits = body.echo and body.logprobs is not None  # once per prompt
    return PromptRuns(ids, plan, [GenerationRun(request, p, len(ids)) for p in plans])


def requested_tokens(body: CompletionRequest) -> int:
    """vLLM's max_completion_tokens wins over max_tokens; without either, OpenAI's default of 16."""
    for value in (body.max_completion_tokens, body.max_tokens):
        if value is not None:
            return value
    return 16


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    state = request.app.state
    check_model(body.model, state.model)
    check_supported(body)
    if body.suffix:
        raise bad_request("suffix is not supported.", "suffix", "unsupported_parameter")
    if body.tools:
        raise bad_request("tools are for /v1/chat/completions.", "tools", "unsupported_parameter")
    guide = request_fields_guide(body)
    check_engine_supports(guide, state.model.engine)
    many = not isinstance(body.prompt, str) and not all(isinstance(item, int) for item in body.prompt)
    check_prompt_count(len(body.prompt) if many else 1, state.settings.max_prompts_per_request)
    if body.max_tokens == 0 and not body.echo:
        raise bad_request("max_tokens=0 returns nothing without echo=true (which scores the prompt).", "max_tokens")
    choices = choices_of(body, body.best_of, body.stream)
    prompts = prompts_of(body, state.tokenizer)
    if body.stream and len(prompts) > 1:
        raise bad_request("Streaming takes one prompt per request.", "prompt")
    groups = [_plan_prompt(request, body, ids, choices, guide) for ids in prompts]
    if body.stream:
        runs = groups[0].runs
        for run in runs:
            await unless_disconnected(request, run.start())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(groups[0], body, state, include_usage), media_type="text/event-stream")
    return await unless_disconnected(request, _complete_all(groups, body, state, choices))


def _choice(index: int, answer: Collected, group: PromptRuns, context: np.ndarray | None, body: CompletionRequest,
            state) -> CompletionChoice:
    tokenizer, score_only = state.tokenizer, body.max_tokens == 0
    prefix = tokenizer.decode(group.ids) if body.echo else ""
    text = prefix if score_only else prefix + answer.text
    choice_logprobs = None
    if body.logprobs is not None:
        scored = [] if score_only else logprobs.generated(answer.token_ids, answer.logprobs,
                                                          answer.logits_rows, body.logprobs)
        if body.echo and context is not None:
            scored = logprobs.prompt(group.ids, context, body.logprobs) + scored
        choice_logprobs = logprobs.for_completion(tokenizer, scored, 0, body.logprobs)
    reason = "length" if score_only else answer.finish_reason
    return CompletionChoice(index=index, text=text, logprobs=choice_logprobs, finish_reason=reason)


async def _complete_all(groups: list[PromptRuns], body: CompletionRequest, state, choices: Choices) -> Completion:
    collected = await asyncio.gather(*(collect(run) for group in groups for run in group.runs))
    result, position, completion_tokens = [], 0, 0
    for group in groups:
        answers = collected[position:position + len(group.runs)]
        position += len(group.runs)
        completion_tokens += 0 if body.max_tokens == 0 else sum(run.completion_tokens for run in group.runs)
        for answer in chosen(answers, choices, group.plan, state.tokenizer):
            result.append(_choice(len(result), answer, group, answers[0].context_logits, body, state))
    usage = Usage.of(sum(len(group.ids) for group in groups), completion_tokens)
    return Completion(id=new_id("cmpl"), model=state.model.name, system_fingerprint=state.model.fingerprint,
                      choices=result, usage=usage)


async def _stream(group: PromptRuns, body: CompletionRequest, state, include_usage: bool) -> AsyncIterator[bytes]:
    chunk_id, model, tokenizer, created = new_id("cmpl"), state.model.name, state.tokenizer, int(time.time())

    def payload(choices: list[CompletionChoice], usage: Usage | None = None) -> Completion:
        return Completion(id=chunk_id, model=model, created=created, system_fingerprint=state.model.fingerprint,
                          choices=choices, usage=usage)

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
        return sse.event(payload(choices, usage))

    # Per choice, the chunk that carries only text, rendered once: the per-token path fills in the text.
    text_events = [sse.TextEvents(payload([CompletionChoice(index=index, text=sse.TEXT_MARK)]).model_dump_json())
                   for index in range(len(group.runs))]
    prefix = tokenizer.decode(group.ids) if body.echo else ""
    offsets = [len(prefix)] * len(group.runs)
    started = [False] * len(group.runs)
    try:
        async for index, delta in merged([run.deltas() for run in group.runs]):
            if body.echo and not started[index]:
                started[index] = True  # the prompt first, with its logprobs (they come with the first response)
                context = delta.chunk.context_logits if delta.chunk is not None else None
                echo_logprobs = None
                if body.logprobs is not None and context is not None:
                    scored = logprobs.prompt(group.ids, context, body.logprobs)
                    echo_logprobs = logprobs.for_completion(tokenizer, scored, 0, body.logprobs)
                yield chunk([CompletionChoice(index=index, text=prefix, logprobs=echo_logprobs)])
            if body.max_tokens == 0:
                if delta.finish_reason:
                    yield chunk([CompletionChoice(index=index, text="", finish_reason="length")])
                continue
            if delta.finish_reason is None and not (body.logprobs is not None and delta.logprobs):
                if delta.text:
                    offsets[index] += len(delta.text)
                    yield text_events[index](delta.text)
                continue
            if not (delta.text or delta.finish_reason or delta.logprobs):
                continue
            delta_logprobs = None
            if body.logprobs is not None and delta.logprobs:
                rows = delta.chunk.generation_logits if delta.chunk is not None else None
                scored = logprobs.generated(delta.token_ids, delta.logprobs, rows, body.logprobs)
                delta_logprobs = logprobs.for_completion(tokenizer, scored, offsets[index], body.logprobs)
            offsets[index] += len(delta.text)
            yield chunk([CompletionChoice(index=index, text=delta.text, logprobs=delta_logprobs,
                                          finish_reason=delta.finish_reason)])
    except APIError as error:
        yield sse.event(error.body())
        yield sse.DONE
        return
    if include_usage:
        generated = 0 if body.max_tokens == 0 else sum(run.completion_tokens for run in group.runs)
        yield chunk([], Usage.of(len(group.ids), generated))
    yield sse.DONE
