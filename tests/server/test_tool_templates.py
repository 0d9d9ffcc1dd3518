"""Tools in chat templates of the three common styles (small templates in the style of Llama 3.1, Mistral and
Hermes/Qwen 2.5): the prompt renders tools, past calls and results; the grammar of each style accepts exactly its
calls; the model's call text, whole or streamed, becomes OpenAI tool calls."""
from __future__ import annotations

import json
import shutil

import pytest
import xgrammar

from server.protocol import ChatCompletionRequest
from server.tokenizer import Tokenizer
from server.tool_formats import FORMATS, ParsedCall
from server.tools import ToolCallStream, answer_message, calls_ebnf, chat_constraints

LLAMA31 = (
    "{{- bos_token }}{%- if tools %}<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
    "Answer a function call as JSON: {\"name\": function name, \"parameters\": arguments}.\n"
    "{%- for t in tools %}{{ t | tojson }}\n{%- endfor %}<|eot_id|>{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{%- for tc in message.tool_calls %}{\"name\": \"{{ tc.function.name }}\", \"parameters\": "
    "{{ tc.function.arguments | tojson }}}{%- endfor %}<|eot_id|>"
    "{%- elif message.role == 'tool' %}<|start_header_id|>ipython<|end_header_id|>\n\n{{ message.content }}<|eot_id|>"
    "{%- else %}<|start_header_id|>{{ message.role }}<|end_header_id|>\n\n{{ message.content }}<|eot_id|>{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}"
)
MISTRAL = (
    "{{- bos_token }}{%- for message in messages %}"
    "{%- if message.role == 'user' %}{%- if tools and loop.last %}[AVAILABLE_TOOLS] {{ tools | tojson }}"
    "[/AVAILABLE_TOOLS]{%- endif %}[INST] {{ message.content }}[/INST]"
    "{%- elif message.role == 'assistant' and message.tool_calls %}[TOOL_CALLS] ["
    "{%- for tc in message.tool_calls %}{%- if tc.id | length != 9 %}"
    "{{ raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}{%- endif %}"
    "{\"name\": \"{{ tc.function.name }}\", \"arguments\": {{ tc.function.arguments | tojson }}, \"id\": "
    "\"{{ tc.id }}\"}{%- if not loop.last %}, {% endif %}{%- endfor %}]{{ eos_token }}"
    "{%- elif message.role == 'tool' %}[TOOL_RESULTS] {\"content\": {{ message.content | tojson }}, \"call_id\": "
    "\"{{ message.tool_call_id }}\"}[/TOOL_RESULTS]"
    "{%- else %}{{ message.content }}{%- endif %}{%- endfor %}"
)
HERMES = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{%- for t in tools %}\n{{ t | tojson }}{%- endfor %}\n"
    "</tools>\nReturn each call as <tool_call>\n{\"name\": <name>, \"arguments\": <args>}\n</tool_call><|im_end|>\n"
    "{%- endif %}{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    "{%- for tc in message.tool_calls %}<tool_call>\n{\"name\": \"{{ tc.function.name }}\", \"arguments\": "
    "{{ tc.function.arguments | tojson }}}\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response>"
    "<|im_end|>\n{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
TEMPLATES = {"llama3_json": LLAMA31, "mistral": MISTRAL, "hermes": HERMES}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}


def _tokenizer(demo_checkpoints, tmp_path, template: str) -> Tokenizer:
    directory = tmp_path / "tokenizer"
    shutil.copytree(demo_checkpoints["llama"], directory, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return Tokenizer(directory)


def _history(call_id: str) -> list[dict]:
    return [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
            {"role": "tool", "tool_call_id": call_id, "content": "21 degrees"},
            {"role": "user", "content": "And in Oslo?"}]


@pytest.mark.parametrize("style", TEMPLATES)
def test_templates_render_tools_calls_and_results(demo_checkpoints, tmp_path, style):
    tokenizer = _tokenizer(demo_checkpoints, tmp_path, TEMPLATES[style])
    body = ChatCompletionRequest(model="m", messages=_history("abcDEF123"), tools=[WEATHER], tool_choice="required")
    constraints = chat_constraints(body, tokenizer.chat_template, "portable")
    assert constraints.tools.format.name == style and constraints.tools.template_knows_tools
    prompt = tokenizer.decode(tokenizer.apply_chat_template(constraints.messages, True, constraints.template_tools),
                              skip_special_tokens=False)
    assert '"name": "get_weather"' in prompt and "Weather in a city." in prompt  # the tools, and the past call
    assert '"city": "Paris"' in prompt and "21 degrees" in prompt and "And in Oslo?" in prompt


@pytest.mark.parametrize("style", TEMPLATES)
def test_required_grammar_accepts_the_style_and_only_valid_arguments(style):
    fmt = FORMATS[style]
    schemas = {"get_weather": WEATHER["function"]["parameters"], "noop": {"type": "object", "properties": {}}}
    grammar = xgrammar.Grammar.from_ebnf(calls_ebnf(fmt, schemas, parallel=True))
    info = xgrammar.TokenizerInfo([chr(code) for code in range(32, 127)] + ["\n"])
    compiled = xgrammar.GrammarCompiler(info).compile_grammar(grammar)

    def accepts(text: str) -> bool:
        matcher = xgrammar.GrammarMatcher(compiled)
        return matcher.accept_string(text) and matcher.is_completed()

    calls = [ParsedCall("get_weather", {"city": "Oslo", "unit": "celsius"}), ParsedCall("noop", {})]
    assert accepts(fmt.render(calls))
    assert not accepts(fmt.render([ParsedCall("get_weather", {"city": "Oslo", "unit": "kelvin"})]))
    assert not accepts(fmt.render([ParsedCall("get_weather", {"city": "Oslo"})]))
    assert not accepts(fmt.render([ParsedCall("unknown", {})]))
    assert not accepts("Sure! " + fmt.render(calls))


@pytest.mark.parametrize("style", TEMPLATES)
def test_call_text_becomes_openai_tool_calls_whole_and_streamed(demo_checkpoints, tmp_path, style):
    tokenizer = _tokenizer(demo_checkpoints, tmp_path, TEMPLATES[style])
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER])
    plan = chat_constraints(body, tokenizer.chat_template, "portable").tools
    calls = [ParsedCall("get_weather", {"city": "Zürich", "unit": "celsius"}),
             ParsedCall("get_weather", {"city": "Lima", "unit": "fahrenheit"})]
    text = "Let me check. " + plan.format.render(calls)
    content, tool_calls = answer_message(plan, text)
    assert content == "Let me check."
    assert [json.loads(call.function.arguments)["city"] for call in tool_calls] == ["Zürich", "Lima"]
    assert len({call.id for call in tool_calls}) == 2
    stream, streamed_content, deltas = ToolCallStream(plan), "", []
    for index in range(0, len(text), 3):  # three characters at a time, triggers split across pieces
        piece, new = stream.feed(text[index:index + 3])
        streamed_content, deltas = streamed_content + piece, deltas + new
    piece, new = stream.finish()
    streamed_content, deltas = streamed_content + piece, deltas + new
    assert streamed_content == "Let me check. "
    assert [delta.index for delta in deltas] == [0, 1]
    assert [json.loads(delta.function.arguments) for delta in deltas] == [call.arguments for call in calls]


def test_text_without_calls_stays_content(demo_checkpoints, tmp_path):
    tokenizer = _tokenizer(demo_checkpoints, tmp_path, HERMES)
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER])
    plan = chat_constraints(body, tokenizer.chat_template, "portable").tools
    assert answer_message(plan, "a < b, <tool_call> broken") == ("a < b, <tool_call> broken", None)
    stream = ToolCallStream(plan)
    text = "".join(stream.feed(piece)[0] for piece in ("a <", "tool", "_c", "x")) + stream.finish()[0]
    assert text == "a <tool_cx" and not stream.called
