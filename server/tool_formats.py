"""How a model family writes tool calls: the text around each call, and parsing that text back.

Three styles cover the common chat templates (the same ones vLLM's tool parsers read):
- `hermes` (Hermes, Qwen 2/2.5/3): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` per call;
- `mistral`: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`;
- `llama3_json` (Llama 3.1/3.2/3.3): `{"name": ..., "parameters": {...}}`, calls joined by `; `.
A template that knows none of them gets `hermes`, described to the model in a system message.
"""
from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: dict


@dataclass(frozen=True)
class ToolFormat:
    name: str
    trigger: str  # the text that opens the tool-call part of an answer
    arguments_key: str
    section_begin: str  # before the first call
    call_begin: str  # before each call's JSON object
    call_end: str
    separator: str  # between calls
    section_end: str

    def call_prefix(self, function: str) -> str:
        """Everything of one call up to its arguments (what a grammar forces once the call is chosen)."""
        return f'{self.call_begin}{{"name": {json.dumps(function, ensure_ascii=False)}, "{self.arguments_key}": '

    def call_suffix(self) -> str:
        return "}" + self.call_end

    def render(self, calls: list[ParsedCall]) -> str:
        """Tool calls as the model writes them (for templates that cannot render `tool_calls` themselves)."""
        body = self.separator.join(
            self.call_prefix(call.name) + json.dumps(call.arguments, ensure_ascii=False) + self.call_suffix()
            for call in calls)
        return self.section_begin + body + self.section_end

    def parse(self, text: str) -> tuple[str, list[ParsedCall], bool]:
        """(content before the calls, the complete calls, whether text from the trigger on was all calls)."""
        start = self.find_start(text)
        if start is None:
            return text, [], True
        calls, clean = _parse_calls(self, text[start:])
        return text[:start], calls, clean

    def find_start(self, text: str) -> int | None:
        index = text.find(self.trigger)
        if self.name == "llama3_json":
            tag = text.find("<|python_tag|>")
            index = tag if tag >= 0 and (index < 0 or tag < index) else index
        return None if index < 0 else index


FORMATS = {
    "hermes": ToolFormat("hermes", "<tool_call>", "arguments", "", "<tool_call>\n", "\n</tool_call>", "\n", ""),
    "mistral": ToolFormat("mistral", "[TOOL_CALLS]", "arguments", "[TOOL_CALLS][", "", "", ", ", "]"),
    "llama3_json": ToolFormat("llama3_json", '{"name"', "parameters", "", "", "", "; ", ""),
}


def detect_format(chat_template: str | None) -> tuple[ToolFormat, bool]:
    """The template's tool-call style, and whether the template itself renders `tools`."""
    template = chat_template or ""
    knows_tools = "tools" in template
    if "[TOOL_CALLS]" in template:
        return FORMATS["mistral"], knows_tools
    if "<tool_call>" in template:
        return FORMATS["hermes"], knows_tools
    if "<|python_tag|>" in template or "ipython" in template:
        return FORMATS["llama3_json"], knows_tools
    return FORMATS["hermes"], False


_DECODER = json.JSONDecoder()


def _objects(text: str) -> tuple[list, str]:
    """JSON values one after another (between separators and whitespace); and what could not be read."""
    values, index = [], 0
    while True:
        while index < len(text) and text[index] in " \t\r\n;,":
            index += 1
        if index >= len(text):
            return values, ""
        try:
            value, index = _DECODER.raw_decode(text, index)
        except ValueError:
            return values, text[index:]
        values.append(value)


def _as_call(fmt: ToolFormat, value) -> ParsedCall | None:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get(fmt.arguments_key, value.get("arguments", value.get("parameters", {})))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    return ParsedCall(value["name"], arguments) if isinstance(arguments, dict) else None


def _parse_calls(fmt: ToolFormat, text: str) -> tuple[list[ParsedCall], bool]:
    if fmt.name == "hermes":
        bodies = re.findall(r"<tool_call>\s*(.*?)\s*</tool_call>", text, re.S)
        leftover = re.sub(r"<tool_call>\s*.*?\s*</tool_call>", "", text, flags=re.S).strip()
        values = [value for body in bodies for value in _objects(body)[0]]
    elif fmt.name == "mistral":
        values, leftover = [], ""
        for part in text.split("[TOOL_CALLS]")[1:]:
            found, rest = _objects(part)
            leftover += rest
            values += [item for value in found for item in (value if isinstance(value, list) else [value])]
    else:
        values, leftover = _objects(text.replace("<|python_tag|>", ""))
    calls = [_as_call(fmt, value) for value in values]
    return [call for call in calls if call is not None], not leftover.strip() and None not in calls


def new_call_id(fmt: ToolFormat) -> str:
    """Mistral's templates require ids of exactly nine letters and digits; others use OpenAI's shape."""
    if fmt.name == "mistral":
        return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
    return f"call_{secrets.token_hex(12)}"
