"""Tool calling through the real stack, read by the official openai client and by langchain.

The demo model's template knows no tools, so the gateway describes them in a system message and uses the
Hermes call format; with `required` or a named function the grammar makes every call well formed. The demo
tokenizer is small (about one token per character of JSON), so these tests serve the demo Llama with a
2048-token context: the tool definitions alone take some 400 tokens."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import openai
import pytest

from engines.targets.portable import build_portable
from tests.conftest import TEST_API_KEY, TEST_SETTINGS, start_gateway

pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "maxLength": 12},
                                      "unit": {"enum": ["C", "F"]}},
                       "required": ["city", "unit"]},
    },
}
ADD = {
    "type": "function",
    "function": {"name": "add", "description": "Add integers.",
                 "parameters": {"type": "object",
                                "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 99},
                                               "b": {"type": "integer", "minimum": -99, "maximum": 99}},
                                "required": ["a", "b"]}},
}
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in (WEATHER, ADD)}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


@dataclass
class ToolStack:
    base_url: str
    api_key: str
    model: str


@pytest.fixture(scope="module")
def tool_stack(demo_checkpoints, triton_server_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("tools-2k")
    checkpoint = shutil.copytree(demo_checkpoints["llama"], root / "checkpoint")
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    artifact = root / "demo-llama"
    build_portable(checkpoint, artifact, TEST_SETTINGS, model_name="demo-llama")
    triton = triton_server_factory(artifact / "model_repository")
    process, base_url = start_gateway(artifact, triton.grpc_url, root / "gateway.log")
    yield ToolStack(base_url, TEST_API_KEY, "demo-llama")
    process.terminate()
    process.wait(timeout=15)


@pytest.fixture(scope="module")
def client(tool_stack):
    return openai.OpenAI(base_url=f"{tool_stack.base_url}/v1", api_key=tool_stack.api_key, max_retries=0,
                         timeout=300)


def _check_calls(calls) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_tool_calls_validate(client, tool_stack):
    for seed, parallel in ((0, False), (1, False), (2, True), (3, True)):
        reply = client.chat.completions.create(model=tool_stack.model, messages=MESSAGES, tools=[WEATHER, ADD],
                                               tool_choice="required", parallel_tool_calls=parallel, temperature=1.0,
                                               max_tokens=300, seed=seed)
        choice = reply.choices[0]
        # With parallel calls the random model decides when to stop calling: it may run out of tokens.
        assert choice.finish_reason == "tool_calls" or parallel and choice.finish_reason == "length"
        _check_calls(choice.message.tool_calls)
        assert parallel or len(choice.message.tool_calls) == 1


def test_named_function_is_called_once(client, tool_stack):
    reply = client.chat.completions.create(
        model=tool_stack.model, messages=MESSAGES, tools=[WEATHER, ADD], temperature=1.0, max_tokens=120, seed=5,
        tool_choice={"type": "function", "function": {"name": "add"}}, parallel_tool_calls=False)
    calls = reply.choices[0].message.tool_calls
    assert [call.function.name for call in calls] == ["add"]
    _check_calls(calls)


def test_streamed_tool_calls_read_by_the_openai_client(client, tool_stack):
    with client.chat.completions.stream(model=tool_stack.model, messages=MESSAGES, tools=[WEATHER],
                                        tool_choice="required", parallel_tool_calls=False, temperature=1.0,
                                        max_tokens=150, seed=9) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in events
    assert final.choices[0].finish_reason == "tool_calls"
    _check_calls(final.choices[0].message.tool_calls)


def test_auto_answers_text_or_valid_calls(client, tool_stack):
    for seed in range(3):
        reply = client.chat.completions.create(model=tool_stack.model, messages=MESSAGES, tools=[WEATHER, ADD],
                                               temperature=1.0, max_tokens=40, seed=seed)
        choice = reply.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            _check_calls(choice.message.tool_calls)
        else:
            assert choice.finish_reason in ("stop", "length") and choice.message.content is not None


def test_tool_history_is_rendered_and_none_gives_text(client, tool_stack):
    history = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    ]
    reply = client.chat.completions.create(model=tool_stack.model, messages=history, tools=[WEATHER],
                                           tool_choice="none", max_tokens=8, temperature=0)
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 60  # the tools, the call and its result are all in the prompt


@pytest.mark.parametrize("tools,tool_choice,param", [
    ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice.function.name"),
    ([WEATHER], "sometimes", "tool_choice"),
    (None, "required", "tool_choice"),
    ([{"type": "function", "function": {"name": "bad name!"}}], "auto", "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array", "uniqueItems": True}}}], "auto",
     "tools[0].function.parameters"),
])
def test_bad_tool_requests_are_400s(client, tool_stack, tools, tool_choice, param):
    extra = {"tools": tools, "tool_choice": tool_choice}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=tool_stack.model, messages=MESSAGES, max_tokens=5, extra_body=extra)
    assert caught.value.body["param"] == param


def test_bad_history_arguments_are_a_400(client, tool_stack):
    history = MESSAGES + [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}}]}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=tool_stack.model, messages=history, tools=[WEATHER], max_tokens=5)
    assert caught.value.body["param"] == "messages[1].tool_calls[0].function.arguments"


def test_langchain_bind_tools_and_with_structured_output(tool_stack):
    langchain_openai = pytest.importorskip("langchain_openai")
    from typing import Literal

    from pydantic import BaseModel, Field

    llm = langchain_openai.ChatOpenAI(model=tool_stack.model, base_url=f"{tool_stack.base_url}/v1",
                                      api_key=tool_stack.api_key, temperature=1.0, max_tokens=200, seed=3,
                                      max_retries=0, timeout=300)

    class GetWeather(BaseModel):
        """The current weather in a city."""

        city: str = Field(max_length=10)  # bounded: a random-weight model would write on forever
        unit: Literal["celsius", "fahrenheit"]

    message = llm.bind_tools([GetWeather], tool_choice="GetWeather").invoke("Weather in Oslo?")
    assert [call["name"] for call in message.tool_calls] == ["GetWeather"]
    GetWeather.model_validate(message.tool_calls[0]["args"])

    class Answer(BaseModel):
        """An answer and how sure it is."""

        answer: str = Field(max_length=12)
        confidence: int = Field(ge=0, le=10)

    for method in ("json_schema", "function_calling"):
        result = llm.with_structured_output(Answer, method=method).invoke("Is the sky blue?")
        assert isinstance(result, Answer) and 0 <= result.confidence <= 10


def test_trtllm_engine_refuses_constraints(demo_artifact, tmp_path: Path):
    """An artifact built for TensorRT-LLM 0.12 has no guided decoding: a 400 before any engine is asked."""
    artifact = tmp_path / "trtllm-artifact"
    shutil.copytree(demo_artifact, artifact, ignore=shutil.ignore_patterns("model_repository"))
    manifest = json.loads((artifact / "manifest.json").read_text())
    (artifact / "manifest.json").write_text(json.dumps({**manifest, "target": "trtllm"}))
    process, base_url = start_gateway(artifact, "127.0.0.1:9", tmp_path / "gateway.log")
    try:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-ingot-test-key", max_retries=0)
        for extra in ({"response_format": {"type": "json_object"}}, {"guided_regex": "a+"},
                      {"tools": [WEATHER], "tool_choice": "required"}):
            with pytest.raises(openai.BadRequestError, match="TensorRT-LLM release has no guided decoding"):
                client.chat.completions.create(model="demo-llama", messages=MESSAGES, max_tokens=5, extra_body=extra)
    finally:
        process.terminate()
        process.wait(timeout=30)
