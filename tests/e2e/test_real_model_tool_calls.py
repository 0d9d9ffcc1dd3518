"""Tool calls of the real default model (SmolLM2-135M-Instruct, float32 on CPU) through Triton, the gateway
and the official openai client.

SmolLM2's chat template knows no tools, so the gateway describes them in a system message and reads the
Hermes format (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`). With `required` or a named
function the grammar makes the call well formed; the arguments are the model's own choice within it, so a
real model fills in the city it was asked about. Greedy decoding keeps the answers reproducible."""
from __future__ import annotations

import json

import jsonschema
import openai
import pytest

pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "description": "The city name, e.g. Paris"},
                                      "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                       "required": ["city", "unit"], "additionalProperties": False},
    },
}
QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def client(real_model_stack):
    return openai.OpenAI(base_url=f"{real_model_stack.base_url}/v1", api_key=real_model_stack.api_key,
                         max_retries=0, timeout=600)


def _weather_call(calls) -> dict:
    """The one call's arguments, after checking it is a well-formed get_weather call."""
    assert calls is not None and len(calls) == 1, calls
    [call] = calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    return arguments


@pytest.mark.parametrize("tool_choice", ["required", NAMED], ids=["required", "named"])
def test_weather_call_not_streamed(client, real_model_stack, tool_choice):
    reply = client.chat.completions.create(model=real_model_stack.model, messages=QUESTION, tools=[WEATHER],
                                           tool_choice=tool_choice, parallel_tool_calls=False, temperature=0,
                                           max_tokens=60)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    arguments = _weather_call(choice.message.tool_calls)
    assert "paris" in arguments["city"].lower(), arguments


@pytest.mark.parametrize("tool_choice", ["required", NAMED], ids=["required", "named"])
def test_weather_call_streamed(client, real_model_stack, tool_choice):
    with client.chat.completions.stream(model=real_model_stack.model, messages=QUESTION, tools=[WEATHER],
                                        tool_choice=tool_choice, parallel_tool_calls=False, temperature=0,
                                        max_tokens=60) as stream:
        events = [event for event in stream]
        final = stream.get_final_completion()
    kinds = [event.type for event in events]
    assert "tool_calls.function.arguments.delta" in kinds and "tool_calls.function.arguments.done" in kinds
    assert final.choices[0].finish_reason == "tool_calls"
    arguments = _weather_call(final.choices[0].message.tool_calls)
    assert "paris" in arguments["city"].lower(), arguments
    # the streamed answer is the one a non-streamed request gets
    plain = client.chat.completions.create(model=real_model_stack.model, messages=QUESTION, tools=[WEATHER],
                                           tool_choice=tool_choice, parallel_tool_calls=False, temperature=0,
                                           max_tokens=60)
    assert json.loads(plain.choices[0].message.tool_calls[0].function.arguments) == arguments


def test_auto_call_then_the_tool_result_is_answered(client, real_model_stack):
    """With `auto` the model decides; a call it starts is completed under the grammar. Its result sent back
    as a `tool` message (after the assistant's `tool_calls`) gets a text answer."""
    reply = client.chat.completions.create(model=real_model_stack.model, messages=QUESTION, tools=[WEATHER],
                                           temperature=0, max_tokens=60)
    choice = reply.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        _weather_call(choice.message.tool_calls)
        call = choice.message.tool_calls[0]
    else:  # the model answered in words: still a well-formed answer, and the call comes from `required`
        assert choice.finish_reason in ("stop", "length") and choice.message.content
        call = client.chat.completions.create(
            model=real_model_stack.model, messages=QUESTION, tools=[WEATHER], tool_choice="required",
            parallel_tool_calls=False, temperature=0, max_tokens=60).choices[0].message.tool_calls[0]
    history = [*QUESTION,
               {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
               {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "clear"})}]
    answer = client.chat.completions.create(model=real_model_stack.model, messages=history, tools=[WEATHER],
                                            tool_choice="none", temperature=0, max_tokens=40)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
