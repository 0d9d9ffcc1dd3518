"""Structured outputs through the real stack with the official openai client: on the random-weight demo model
the grammar does all the work, so every answer that parses and validates is the grammar's doing."""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Annotated, Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]

SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Z][a-z]{1,8}$"},
            "address": {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                                                         "floor": {"type": "integer", "minimum": 0, "maximum": 9}},
                        "required": ["zip", "floor"], "additionalProperties": False},
        },
        "required": ["name", "address"], "additionalProperties": False,
    },
    "arrays": {
        "type": "object",
        "properties": {"scores": {"type": "array", "items": {"type": "integer", "minimum": -3, "maximum": 3},
                                  "minItems": 1, "maxItems": 4},
                       "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2}},
        "required": ["scores", "tags"], "additionalProperties": False,
    },
    "enums": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"},
                       "size": {"type": "string", "enum": ["S", "M", "L"]}, "nothing": {"type": "null"}},
        "required": ["color", "ok", "size", "nothing"], "additionalProperties": False,
    },
    "numbers": {
        "type": "object",
        "properties": {"ratio": {"type": "number", "minimum": 0, "maximum": 1},
                       "count": {"type": "integer", "minimum": 10, "maximum": 99},
                       "code": {"type": "string", "pattern": "^[A-F]{2}-[0-9]{3}$"}},
        "required": ["ratio", "count", "code"], "additionalProperties": False,
    },
}


class Address(BaseModel):
    city: Literal["Paris", "Oslo", "Lima"]
    floor: int = Field(ge=0, le=20)


class Person(BaseModel):
    name: str = Field(pattern="^[A-Z][a-z]{1,8}$")
    age: int = Field(ge=0, le=120)
    address: Address
    nicknames: list[Annotated[str, Field(max_length=8)]] = Field(max_length=2)


@pytest.fixture(scope="module")
def client(ingot_stack):
    return openai.OpenAI(base_url=f"{ingot_stack.base_url}/v1", api_key=ingot_stack.api_key, max_retries=0,
                         timeout=300)


def _format(name: str) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}


def test_parse_with_a_pydantic_model(client, ingot_stack):
    completion = client.chat.completions.parse(model=ingot_stack.model, messages=MESSAGES, response_format=Person,
                                               temperature=1.0, max_tokens=300, seed=7)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Person)
    assert choice.message.parsed == Person.model_validate_json(choice.message.content)


def test_hundred_sampled_requests_all_validate(ingot_stack):
    async def run() -> list[tuple[str, object]]:
        client = openai.AsyncOpenAI(base_url=f"{ingot_stack.base_url}/v1", api_key=ingot_stack.api_key,
                                    max_retries=0, timeout=600)
        names = [name for name in SCHEMAS for _ in range(25)]
        limit = asyncio.Semaphore(32)

        async def one(index: int, name: str):
            async with limit:
                return name, await client.chat.completions.create(
                    model=ingot_stack.model, messages=MESSAGES, response_format=_format(name), temperature=1.0,
                    max_tokens=200, seed=index)

        try:
            return await asyncio.gather(*(one(index, name) for index, name in enumerate(names)))
        finally:
            await client.close()

    results = asyncio.run(run())
    assert len(results) == 100
    for name, reply in results:
        assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
        jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMAS[name])
    assert len({reply.choices[0].message.content for _, reply in results}) > 50  # sampled, not one answer


def test_json_object_streamed(client, ingot_stack):
    stream = client.chat.completions.create(model=ingot_stack.model, messages=MESSAGES, stream=True,
                                            response_format={"type": "json_object"}, max_tokens=40, seed=3)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.startswith("{")


def test_vllm_extensions(client, ingot_stack):
    def ask(extra: dict, endpoint: str = "chat") -> str:
        if endpoint == "chat":
            reply = client.chat.completions.create(model=ingot_stack.model, messages=MESSAGES, max_tokens=60,
                                                   temperature=1.0, seed=11, extra_body=extra)
            return reply.choices[0].message.content
        reply = client.completions.create(model=ingot_stack.model, prompt="Answer:", max_tokens=60, temperature=1.0,
                                          seed=11, extra_body=extra)
        return reply.choices[0].text

    assert ask({"guided_choice": ["yes", "no", "peut-être"]}) in ("yes", "no", "peut-être")
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", ask({"guided_regex": "[0-9]{3}-[a-z]{2}"}))
    assert re.fullmatch(r"A[bc]{1,4}!", ask({"guided_grammar": 'root ::= "A" [bc]{1,4} "!"'}))
    assert ask({"structured_outputs": {"choice": ["left", "right"]}}) in ("left", "right")
    jsonschema.validate(json.loads(ask({"guided_json": SCHEMAS["enums"]}, "completions")), SCHEMAS["enums"])


@pytest.mark.parametrize("extra,param,words", [
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}}}},
     "response_format.json_schema.schema", "uniqueItems"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integer", "not": {"const": 1}}}}}}},
     "response_format.json_schema.schema", "properties.a.not"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}}},
     "response_format.json_schema.schema", "type"),
    ({"response_format": {"type": "yaml"}}, "response_format.type", "yaml"),
    ({"guided_regex": "(?<=a)b"}, "guided_regex", "Lookbehind"),
    ({"guided_grammar": "root ::= undefined_rule"}, "guided_grammar", "undefined_rule"),
    ({"guided_choice": []}, "guided_choice", "non-empty"),
    ({"guided_json": {"type": "object"}, "guided_regex": "a+"}, "guided_regex", "Only one constraint"),
    ({"response_format": {"type": "json_object"}, "guided_choice": ["a"]}, "response_format", "cannot be combined"),
])
def test_bad_constraints_are_400s_naming_the_problem(client, ingot_stack, extra, param, words):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=ingot_stack.model, messages=MESSAGES, max_tokens=5, extra_body=extra)
    error = caught.value.body
    assert error["param"] == param
    assert words in error["message"]


def test_text_response_format_is_plain_text(client, ingot_stack):
    reply = client.chat.completions.create(model=ingot_stack.model, messages=MESSAGES, max_tokens=5, temperature=0,
                                           response_format={"type": "text"})
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_readme_example_works_as_written(real_model_stack, capsys):
    """The README's example against the model `make serve` serves by default, only the address and key swapped."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Structured outputs and tools", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert f'model="{real_model_stack.model}"' in code
    code = code.replace("http://127.0.0.1:8000", real_model_stack.base_url)
    code = code.replace("ingot-demo-key", real_model_stack.api_key)
    exec(compile(code, "README.md", "exec", dont_inherit=True), {"__name__": "readme_example"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("name=") and lines[1].startswith("tool_calls GetWeather city=")
