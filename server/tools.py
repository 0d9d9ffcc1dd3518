"""Tool calling for chat completions: tools checked, the prompt's messages shaped for the chat template,
the grammar that enforces `tool_choice`, and the model's tool-call text turned into OpenAI `tool_calls`.

`required` and a named function are enforced by an EBNF grammar: the answer is nothing but calls whose
arguments follow each function's JSON schema. With `auto` the answer is free text, and a call the model
starts (its format's trigger, e.g. `<tool_call>`) is completed under the grammar (a structural tag).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from server.errors import bad_request
from server.protocol import (ChatCompletionRequest, FunctionCall, FunctionCallDelta, ToolCall, ToolCallDelta)
from server.structured_outputs import (EngineGuide, apply_guide, check_engine_supports, json_schema_ebnf,
                                       request_fields_guide)
from server.tool_formats import ParsedCall, ToolFormat, detect_format, new_call_id

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass
class ToolPlan:
    format: ToolFormat
    tools: list[dict]  # OpenAI tool definitions, checked
    choice: str  # "none", "auto", "required" or "function"
    function: str | None = None  # the named function of choice "function"
    parallel: bool = True
    template_knows_tools: bool = True
    guide: EngineGuide | None = None
    schemas: dict[str, dict] = field(default_factory=dict)

    @property
    def parses_calls(self) -> bool:
        return self.choice != "none"


def plan_tools(body: ChatCompletionRequest, chat_template: str | None) -> ToolPlan | None:
    if not body.tools:
        if body.tool_choice not in (None, "none"):
            raise bad_request("tool_choice needs tools.", "tool_choice")
        return None
    fmt, knows_tools = detect_format(chat_template)
    schemas = _checked_tools(body.tools)
    choice, function = _choice(body.tool_choice, schemas)
    plan = ToolPlan(fmt, body.tools, choice, function, body.parallel_tool_calls, knows_tools, schemas=schemas)
    plan.guide = _guide(plan)
    return plan


def _checked_tools(tools: list[dict]) -> dict[str, dict]:
    """Each function's parameters schema by name, after checking names and schemas."""
    schemas: dict[str, dict] = {}
    for index, tool in enumerate(tools):
        param = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise bad_request("Only tools of type 'function' are supported.", f"{param}.type")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request("A tool needs a function with a name.", f"{param}.function")
        name = function["name"]
        if not NAME_PATTERN.match(name):
            raise bad_request(f"Function names are 1 to 64 letters, digits, '_' or '-'; got {name!r}.",
                              f"{param}.function.name")
        if name in schemas:
            raise bad_request(f"Function {name!r} is defined twice.", f"{param}.function.name")
        parameters = function.get("parameters") or EMPTY_PARAMETERS
        json_schema_ebnf(parameters, f"{param}.function.parameters")  # a 400 naming the keyword, now
        schemas[name] = parameters
    return schemas


def _choice(tool_choice, schemas: dict[str, dict]) -> tuple[str, str | None]:
    if tool_choice is None:
        return "auto", None
    if tool_choice in ("none", "auto", "required"):
        return tool_choice, None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if name not in schemas:
            raise bad_request(f"tool_choice names the function {name!r}, which is not among the tools.",
                              "tool_choice.function.name")
        return "function", name
    raise bad_request("tool_choice must be 'none', 'auto', 'required' or "
                      "{\"type\": \"function\", \"function\": {\"name\": ...}}.", "tool_choice")


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string literal is an EBNF string literal


def calls_ebnf(fmt: ToolFormat, schemas: dict[str, dict], parallel: bool) -> str:
    """EBNF of an answer made only of calls to these functions, arguments valid for their schemas."""
    import xgrammar

    alternatives = []
    for name, schema in schemas.items():
        arguments = xgrammar.Grammar.from_ebnf(json_schema_ebnf(schema, "tools", strict=True))
        alternatives.append(xgrammar.Grammar.concat(
            xgrammar.Grammar.from_ebnf(f"root ::= {_literal(fmt.call_prefix(name))}"), arguments,
            xgrammar.Grammar.from_ebnf(f"root ::= {_literal(fmt.call_suffix())}")))
    call = alternatives[0] if len(alternatives) == 1 else xgrammar.Grammar.union(*alternatives)
    rules = re.sub(r"^root ::=", "tool_call ::=", str(call), flags=re.M)
    repeat = f" ({_literal(fmt.separator)} tool_call)*" if parallel else ""
    parts = [_literal(fmt.section_begin)] if fmt.section_begin else []
    parts.append(f"tool_call{repeat}")
    if fmt.section_end:
        parts.append(_literal(fmt.section_end))
    return f"root ::= {' '.join(parts)}\n{rules}"


def _guide(plan: ToolPlan) -> EngineGuide | None:
    if plan.choice == "none":
        return None
    if plan.choice == "function":
        return EngineGuide("ebnf_grammar", calls_ebnf(plan.format, {plan.function: plan.schemas[plan.function]},
                                                      parallel=False))
    if plan.choice == "required":
        return EngineGuide("ebnf_grammar", calls_ebnf(plan.format, plan.schemas, plan.parallel))
    fmt = plan.format
    structures = [{"begin": fmt.section_begin + fmt.call_prefix(name), "schema": schema,
                   "end": fmt.call_suffix() + fmt.section_end} for name, schema in plan.schemas.items()]
    return EngineGuide("structural_tag", json.dumps({"structures": structures, "triggers": [fmt.trigger]},
                                                    ensure_ascii=False))


# ---- the prompt

def template_messages(body: ChatCompletionRequest, plan: ToolPlan | None) -> list[dict]:
    """Messages for the chat template, tool calls and tool results included."""
    messages = []
    for index, message in enumerate(body.messages):
        entry: dict = {"role": message.role, "content": message.text()}
        if message.name is not None:
            entry["name"] = message.name
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        if message.tool_calls:
            calls = [_template_call(call, f"messages[{index}].tool_calls[{number}]")
                     for number, call in enumerate(message.tool_calls)]
            if plan is not None and not plan.template_knows_tools:
                rendered = plan.format.render([ParsedCall(c["function"]["name"], c["function"]["arguments"])
                                               for c in calls])
                entry["content"] = (entry["content"] + "\n" if entry["content"] else "") + rendered
            else:
                entry["tool_calls"] = calls
        messages.append(entry)
    if plan is not None and not plan.template_knows_tools:
        messages.insert(0, {"role": "system", "content": _tools_system_prompt(plan)})
    return messages


def _template_call(call: ToolCall, param: str) -> dict:
    """Templates take the arguments as a mapping (they `tojson` it), as vLLM passes them."""
    where = f"{param}.function.arguments"
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except ValueError as exc:
        raise bad_request(f"{where} is not valid JSON: {exc}", where) from exc
    if not isinstance(arguments, dict):
        raise bad_request(f"{where} must be a JSON object", where)
    return {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}


def _tools_system_prompt(plan: ToolPlan) -> str:
    functions = "\n".join(json.dumps(tool["function"], ensure_ascii=False, separators=(",", ":"))
                          for tool in plan.tools)
    example = plan.format.render([ParsedCall("<name>", {"<argument>": "<value>"})])
    return f"Functions you may call:\n<tools>\n{functions}\n</tools>\nTo call one, answer:\n{example}"


def template_tools(plan: ToolPlan | None) -> list[dict] | None:
    return plan.tools if plan is not None and plan.template_knows_tools else None


# ---- the answer

def tool_calls_of(plan: ToolPlan, calls: list[ParsedCall]) -> list[ToolCall]:
    return [ToolCall(id=new_call_id(plan.format),
                     function=FunctionCall(name=call.name, arguments=json.dumps(call.arguments, ensure_ascii=False)))
            for call in calls]


def answer_message(plan: ToolPlan | None, text: str) -> tuple[str | None, list[ToolCall] | None]:
    """(content, tool_calls) of a whole answer."""
    if plan is None or not plan.parses_calls:
        return text, None
    content, calls, _ = plan.format.parse(text)
    known = [call for call in calls if call.name in plan.schemas]
    if not known:
        return text, None
    return (content.strip() or None), tool_calls_of(plan, known)


class ToolCallStream:
    """Splits streamed text into content deltas and OpenAI tool-call deltas (one per complete call)."""

    def __init__(self, plan: ToolPlan):
        self.plan, self.fmt = plan, plan.format
        self.text = ""
        self.sent_content = 0  # characters of `text` sent as content
        self.start: int | None = None  # where the calls begin
        self.sent_calls = 0

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        self.text += text
        if self.start is None:
            self.start = self.fmt.find_start(self.text)
        if self.start is None:
            return self._content(self._safe_end()), []
        return self._content(self.start), self._new_calls()

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        deltas = [] if self.start is None else self._new_calls()
        if not self.sent_calls:  # no trigger, or a trigger that led to no call: it was all text
            return self._content(len(self.text)), []
        return self._content(self.start), deltas

    @property
    def called(self) -> bool:
        return self.sent_calls > 0

    def _safe_end(self) -> int:
        """Hold back a tail that could be the start of the trigger."""
        for keep in range(min(len(self.fmt.trigger) - 1, len(self.text)), 0, -1):
            if self.fmt.trigger.startswith(self.text[-keep:]):
                return len(self.text) - keep
        return len(self.text)

    def _content(self, end: int) -> str:
        piece, self.sent_content = self.text[self.sent_content:end], max(self.sent_content, end)
        return piece

    def _new_calls(self) -> list[ToolCallDelta]:
        _, calls, _ = self.fmt.parse(self.text[self.start:])
        calls = [call for call in calls if call.name in self.plan.schemas]
        new = calls[self.sent_calls:]
        deltas = []
        for offset, call in enumerate(tool_calls_of(self.plan, new)):
            deltas.append(ToolCallDelta(index=self.sent_calls + offset, id=call.id, type="function",
                                        function=FunctionCallDelta(name=call.function.name,
                                                                   arguments=call.function.arguments)))
        self.sent_calls += len(new)
        return deltas


# ---- what the chat route asks

@dataclass
class ChatConstraints:
    """A chat request's messages for the template, its tools and its one guide."""

    messages: list[dict]
    tools: ToolPlan | None
    guide: EngineGuide | None

    @property
    def template_tools(self) -> list[dict] | None:
        return template_tools(self.tools)

    def apply(self, plan) -> None:
        apply_guide(plan, self.guide)
        if self.tools is not None and self.tools.parses_calls:
            plan.skip_special_tokens = False  # e.g. Mistral's [TOOL_CALLS] is a special token


def chat_constraints(body: ChatCompletionRequest, chat_template: str | None, engine_kind: str) -> ChatConstraints:
    tools = plan_tools(body, chat_template)
    guide = request_fields_guide(body)
    if guide is not None and tools is not None and tools.guide is not None:
        raise bad_request("response_format or guided decoding cannot be combined with tool_choice "
                          f"'{tools.choice}'; use tool_choice 'none'.", "tool_choice")
    guide = guide or (tools.guide if tools is not None else None)
    check_engine_supports(guide, engine_kind)
    return ChatConstraints(template_messages(body, tools), tools, guide)
