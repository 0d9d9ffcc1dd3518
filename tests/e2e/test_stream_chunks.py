"""The raw SSE chunks of streamed chat and text completions, as OpenAI sends them."""
from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.e2e


def stream_events(stack, path: str, body: dict) -> list[dict]:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.stream("POST", f"{stack.base_url}{path}", json={"model": stack.model, "stream": True, **body},
                      headers=headers, timeout=60) as response:
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_only_the_first_chat_delta_names_the_role(ingot_stack):
    events = stream_events(ingot_stack, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 12, "ignore_eos": True})
    deltas = [event["choices"][0]["delta"] for event in events]
    assert deltas[0]["role"] == "assistant" and deltas[0]["content"] == ""
    assert len(deltas) > 2 and all("role" not in delta for delta in deltas[1:])
    assert [event["choices"][0]["finish_reason"] for event in events][-1] == "length"
    assert {event["object"] for event in events} == {"chat.completion.chunk"}
    assert len({(event["id"], event["created"]) for event in events}) == 1


def test_text_completion_chunks_share_id_and_created(ingot_stack):
    events = stream_events(ingot_stack, "/v1/completions", {
        "prompt": "Hello", "max_tokens": 12, "ignore_eos": True, "stream_options": {"include_usage": True}})
    assert len({(event["id"], event["created"]) for event in events}) == 1
    text_chunks = [event for event in events if event["choices"]]
    assert all(set(event["choices"][0]) == {"index", "text", "logprobs", "finish_reason"} for event in text_chunks)
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 12
