"""POST /v1/chat/completions."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from server import logprobs, sse
from server.choices import Choices, choices_of, chosen, collect, merged, plans_for
from server.errors import APIError, bad_request
from server.generation import GenerationPlan
from server.protocol import (AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
                             ChatCompletionRequest, ChoiceLogprobs, DeltaMessage, Usage, new_id)
from server.runner import GenerationRun, unless_disconnected
from server.sampling import check_model, check_supported, output_budget, plan_generation
from server.tools import ToolCallStream, ToolPlan, answer_message, chat_constraints

router = APIRouter()


def _logprobs(state, body: ChatCompletionRequest, token_ids: list[int], token_logprobs: list[float] | None,
              rows: np.ndarray | None) -> ChoiceLogprobs | None:
    if not body.logprobs or token_logprobs is None:
        return None
    scored = logprobs.generated(token_ids, token_logprobs, rows, body.top_logprobs or 0)
    return logprobs.for_chat(state.tokenizer, state.tokenizer.token_bytes, scored)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = request.app.state
    check_model(body.model, state.model)
    check_supported(body)
    if body.top_logprobs and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs=true.", "top_logprobs")
    choices = choices_of(body, None, body.stream)
    constraints = chat_constraints(body, state.tokenizer.chat_template, state.model.engine)
    prompt_ids = state.tokenizer.apply_chat_template(constraints.messages, body.add_generation_prompt,
                                                     constraints.template_tools)
    requested = body.max_completion_tokens or body.max_tokens
    max_tokens = output_budget(requested, len(prompt_ids), state.model.max_model_len, "messages")
    plan = plan_generation(body, prompt_ids, state.tokenizer, max_tokens, return_log_probs=body.logprobs)
    constraints.apply(plan)
    plan.request.return_generation_logits = bool(body.logprobs and body.top_logprobs)
    runs = [GenerationRun(request, p, len(prompt_ids)) for p in plans_for(plan, choices, body)]
    if body.stream:
        for run in runs:
            await unless_disconnected(request, run.start())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(runs, body, state, len(prompt_ids), include_usage, constraints.tools),
                                 media_type="text/event-stream")
    return await unless_disconnected(request, _complete(runs, plan, choices, body, state, len(prompt_ids),
                                                        constraints.tools))


def _finish_reason(reason: str | None, called: bool) -> str | None:
    return "tool_calls" if called and reason == "stop" else reason


def _answer(index: int, answer, body: ChatCompletionRequest, state, tools: ToolPlan | None) -> ChatChoice:
    content, tool_calls = answer_message(tools, answer.text)
    return ChatChoice(index=index, message=AssistantMessage(content=content, tool_calls=tool_calls),
                      logprobs=_logprobs(state, body, answer.token_ids, answer.logprobs, answer.logits_rows),
                      finish_reason=_finish_reason(answer.finish_reason, bool(tool_calls)))


async def _complete(runs: list[GenerationRun], plan: GenerationPlan, choices: Choices, body: ChatCompletionRequest,
                    state, prompt_tokens: int, tools: ToolPlan | None) -> ChatCompletion:
    collected = await asyncio.gather(*(collect(run) for run in runs))
    result = [_answer(index, answer, body, state, tools)
              for index, answer in enumerate(chosen(list(collected), choices, plan, state.tokenizer))]
    usage = Usage.of(prompt_tokens, sum(run.completion_tokens for run in runs))
    return ChatCompletion(id=new_id("chatcmpl"), model=state.model.name,
                          system_fingerprint=state.model.fingerprint, choices=result, usage=usage)


NO_ROLE = {"choices": {"__all__": {"delta": {"role"}}}}  # only the first delta names the role, as OpenAI's


async def _stream(runs: list[GenerationRun], body: ChatCompletionRequest, state, prompt_tokens: int,
                  include_usage: bool, tools: ToolPlan | None) -> AsyncIterator[bytes]:
    calls = [ToolCallStream(tools) if tools is not None and tools.parses_calls else None for _ in runs]
    chunk_id, model, created = new_id("chatcmpl"), state.model.name, int(time.time())

    def payload(choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=chunk_id, model=model, created=created,
                                   system_fingerprint=state.model.fingerprint, choices=choices, usage=usage)

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None, exclude=None) -> bytes:
        return sse.event(payload(choices, usage), exclude=exclude)

    # Per choice, the chunk that carries only text, rendered once: the per-token path fills in the text.
    text_events = [sse.TextEvents(payload([ChatChunkChoice(index=index, delta=DeltaMessage(content=sse.TEXT_MARK))])
                                  .model_dump_json(exclude=NO_ROLE)) for index in range(len(runs))]
    for index in range(len(runs)):
        yield chunk([ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))])
    try:
        async for index, delta in merged([run.deltas() for run in runs]):
            call = calls[index]
            if call is None and delta.finish_reason is None and not (body.logprobs and delta.logprobs):
                if delta.text:
                    yield text_events[index](delta.text)
                continue
            if not (delta.text or delta.finish_reason or delta.logprobs):
                continue
            rows = delta.chunk.generation_logits if delta.chunk is not None else None
            choice_logprobs = _logprobs(state, body, delta.token_ids, delta.logprobs, rows)
            text, tool_deltas = delta.text, []
            if call is not None:  # tool-call text leaves as tool_calls deltas, one per complete call
                text, tool_deltas = call.feed(delta.text)
                if delta.finish_reason is not None:
                    rest, more = call.finish()
                    text, tool_deltas = text + rest, tool_deltas + more
            finish_reason = _finish_reason(delta.finish_reason, call is not None and call.called)
            yield chunk([ChatChunkChoice(index=index,
                                         delta=DeltaMessage(content=text or None, tool_calls=tool_deltas or None),
                                         logprobs=choice_logprobs, finish_reason=finish_reason)], exclude=NO_ROLE)
    except APIError as error:
        yield sse.event(error.body())
        yield sse.DONE
        return
    if include_usage:
        yield chunk([], Usage.of(prompt_tokens, sum(run.completion_tokens for run in runs)))
    yield sse.DONE
