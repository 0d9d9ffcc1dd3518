"""POST /v1/chat/completions."""
from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from server import sse
from server.errors import APIError, bad_request
from server.protocol import (AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
                             ChatCompletionRequest, ChoiceLogprobs, DeltaMessage, TokenLogprob, Usage, new_id)
from server.runner import GenerationRun, unless_disconnected
from server.sampling import check_model, check_supported, output_budget, plan_generation
from server.tokenizer import Tokenizer
from server.tools import ToolCallStream, ToolPlan, answer_message, chat_constraints

router = APIRouter()


def _logprobs(tokenizer: Tokenizer, token_ids: list[int], logprobs: list[float] | None) -> ChoiceLogprobs | None:
    if logprobs is None:
        return None
    content = []
    for token_id, logprob in zip(token_ids, logprobs, strict=False):
        text = tokenizer.token_text(token_id)
        content.append(TokenLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8"))))
    return ChoiceLogprobs(content=content)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = request.app.state
    check_model(body.model, state.model.name)
    check_supported(body)
    if body.top_logprobs:
        raise bad_request("top_logprobs > 0 is not supported; use logprobs=true.", "top_logprobs",
                          "unsupported_parameter")
    constraints = chat_constraints(body, state.tokenizer.chat_template, state.model.engine)
    prompt_ids = state.tokenizer.apply_chat_template(constraints.messages, body.add_generation_prompt,
                                                     constraints.template_tools)
    requested = body.max_completion_tokens or body.max_tokens
    max_tokens = output_budget(requested, len(prompt_ids), state.model.max_model_len, "messages")
    plan = plan_generation(body, prompt_ids, state.tokenizer, max_tokens, return_log_probs=body.logprobs)
    constraints.apply(plan)
    run = GenerationRun(request, plan, len(prompt_ids))
    if body.stream:
        await unless_disconnected(request, run.start())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(run, state, include_usage, constraints.tools), media_type="text/event-stream")
    return await unless_disconnected(request, _complete(run, state, constraints.tools))


def _finish_reason(reason: str | None, called: bool) -> str | None:
    return "tool_calls" if called and reason == "stop" else reason


async def _complete(run: GenerationRun, state, tools: ToolPlan | None) -> ChatCompletion:
    await run.start()
    text, token_ids, logprobs, finish_reason = [], [], [], None
    async for delta in run.deltas():
        text.append(delta.text)
        token_ids.extend(delta.token_ids)
        logprobs.extend(delta.logprobs or [])
        finish_reason = delta.finish_reason or finish_reason
    content, tool_calls = answer_message(tools, "".join(text))
    choice = ChatChoice(
        message=AssistantMessage(content=content, tool_calls=tool_calls),
        logprobs=_logprobs(state.tokenizer, token_ids, logprobs if run.plan.request.return_log_probs else None),
        finish_reason=_finish_reason(finish_reason, bool(tool_calls)),
    )
    return ChatCompletion(id=new_id("chatcmpl"), model=state.model.name, choices=[choice],
                          usage=Usage.of(run.prompt_tokens, run.completion_tokens))


async def _stream(run: GenerationRun, state, include_usage: bool, tools: ToolPlan | None) -> AsyncIterator[str]:
    chunk_id, model = new_id("chatcmpl"), state.model.name
    calls = ToolCallStream(tools) if tools is not None and tools.parses_calls else None

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
        return sse.event(ChatCompletionChunk(id=chunk_id, model=model, choices=choices, usage=usage))

    yield chunk([ChatChunkChoice(delta=DeltaMessage(role="assistant", content=""))])
    try:
        async for delta in run.deltas():
            if not (delta.text or delta.finish_reason or delta.logprobs):
                continue
            logprobs = _logprobs(state.tokenizer, delta.token_ids, delta.logprobs)
            text, tool_deltas = delta.text, []
            if calls is not None:  # tool-call text leaves as tool_calls deltas, one per complete call
                text, tool_deltas = calls.feed(delta.text)
                if delta.finish_reason is not None:
                    rest, more = calls.finish()
                    text, tool_deltas = text + rest, tool_deltas + more
            finish_reason = _finish_reason(delta.finish_reason, calls is not None and calls.called)
            yield chunk([ChatChunkChoice(delta=DeltaMessage(content=text or None, tool_calls=tool_deltas or None),
                                         logprobs=logprobs, finish_reason=finish_reason)])
    except APIError as error:
        yield sse.event(error.body())
        yield sse.DONE
        return
    if include_usage:
        yield chunk([], Usage.of(run.prompt_tokens, run.completion_tokens))
    yield sse.DONE
