"""How one streamed answer is read: which chunks carry output, where counts come from, what counts as an error."""
from __future__ import annotations

import asyncio
import json
import time

import httpx

from benchmarks.client import send
from benchmarks.targets import Target, parse_target
from benchmarks.workload import BenchRequest

REQUEST = BenchRequest(0, "hello there", max_tokens=3)
PLAIN = Target("t", "http://server")


def sse(*events) -> bytes:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events).encode()


def answer(body: bytes, target: Target = PLAIN, status: int = 200):
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["url"], seen["json"] = str(request.url), json.loads(request.content)
        return httpx.Response(status, content=body)

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await send(client, target, REQUEST, time.perf_counter())

    return asyncio.run(go()), seen


def chunk(content=None, finish=None, usage=None, role=None) -> dict:
    delta = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"choices": choices, "usage": usage}


def test_only_chunks_with_text_are_timed_and_usage_wins():
    record, seen = answer(sse(chunk(role="assistant", content=""), chunk("Hel"), chunk("lo"), chunk(finish="length"),
                              chunk(usage={"prompt_tokens": 5, "completion_tokens": 3}), "[DONE]"))
    assert record.ok and len(record.chunk_times) == 2
    assert record.output_tokens == 3 and record.prompt_tokens == 5 and record.usage_reported
    assert seen["url"] == "http://server/v1/chat/completions"
    assert seen["json"]["stream_options"] == {"include_usage": True} and "ignore_eos" not in seen["json"]


def test_without_usage_chunks_are_counted():
    record, _ = answer(sse(chunk("a"), chunk("b", finish="stop"), "[DONE]"))
    assert record.ok and record.output_tokens == 2 and not record.usage_reported


def test_error_event_missing_done_and_http_status_are_errors():
    assert answer(sse(chunk("a"), {"error": {"message": "engine failed"}}))[0].error == "stream_error"
    assert answer(sse(chunk("a")))[0].error == "stream_incomplete"
    assert answer(sse(chunk(usage={"prompt_tokens": 1, "completion_tokens": 0}), "[DONE]"))[0].error == "no_output"
    record, _ = answer(b'{"error": "overloaded"}', status=503)
    assert record.error == "http_503" and record.status == 503 and "overloaded" in record.error_detail


def test_payloads_per_server_kind():
    defaults = Target("", "")
    ingot = parse_target("url=http://h:1/v1/,server=ingot,model=m", defaults, 0)
    _, seen = answer(sse(chunk("a"), "[DONE]"), ingot)
    assert seen["url"] == "http://h:1/v1/chat/completions" and seen["json"]["ignore_eos"] is True
    plain = parse_target("url=h:2,api=completions,min-tokens=1", defaults, 1)
    _, seen = answer(sse({"choices": [{"text": "a"}]}, "[DONE]"), plain)
    assert seen["json"]["prompt"] == "hello there" and seen["json"]["min_tokens"] == 3
    assert "ignore_eos" not in seen["json"]
    tgi = parse_target("url=http://h:3,api=tgi", defaults, 2)
    record, seen = answer(sse({"token": {"id": 1, "text": "a"}, "generated_text": None, "details": None},
                              {"token": {"id": 2, "text": "</s>", "special": True}, "generated_text": "a",
                               "details": {"generated_tokens": 2, "input_length": 2}}), tgi)
    assert seen["json"] == {"inputs": "hello there", "parameters": {"max_new_tokens": 3, "details": True}}
    assert record.ok and record.output_tokens == 2 and record.prompt_tokens == 2


def test_a_finish_reason_ends_the_answer_without_done():
    # transformers serve: finish reason and usage in the last chunk, no [DONE]
    record, _ = answer(sse(chunk(role="assistant"), chunk("a"), chunk("b"),
                           {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                            "usage": {"prompt_tokens": 4, "completion_tokens": 2}}))
    assert record.ok and record.output_tokens == 2 and len(record.chunk_times) == 2


def test_temperature_is_sent_only_when_asked():
    _, seen = answer(sse(chunk("a"), "[DONE]"), parse_target("url=http://server", Target("", "", temperature=0.0), 0))
    assert seen["json"]["temperature"] == 0.0
    _, seen = answer(sse(chunk("a"), "[DONE]"))
    assert "temperature" not in seen["json"]


def test_llama_cpp_gets_no_repeat_penalty_and_min_tokens():
    target = parse_target("url=http://h:4,server=llamacpp,min-tokens=1", Target("", "", temperature=0.0), 0)
    _, seen = answer(sse(chunk("a"), "[DONE]"), target)
    assert seen["json"]["repeat_penalty"] == 1.0 and seen["json"]["min_tokens"] == 3
    assert seen["json"]["temperature"] == 0.0 and "ignore_eos" not in seen["json"]
    _, seen = answer(sse(chunk("a"), "[DONE]"))
    assert "repeat_penalty" not in seen["json"]
