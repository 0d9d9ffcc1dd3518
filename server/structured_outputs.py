"""`response_format` and vLLM's guided-decoding fields turned into one engine guide, checked up front.

Every constraint becomes an EBNF grammar here (xgrammar's converter), so the engine compiles one kind of
guide and the gateway decides the details: compact JSON, OpenAI's `strict`, and a 400 naming any schema
keyword the grammar could not enforce (a constraint silently dropped would be a silent change of meaning).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from engines.json_grammar import first_line, schema_to_ebnf
from server.errors import bad_request

# Keywords xgrammar 0.2's JSON-schema converter accepts but does not enforce (it leaves them out of the grammar).
UNENFORCED_KEYWORDS = ("not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies",
                       "uniqueItems", "contains", "minContains", "maxContains", "unevaluatedProperties",
                       "unevaluatedItems", "$dynamicRef", "$recursiveRef")
# Subschema-valued keywords, walked to find the unenforced ones wherever they are.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "propertyNames")


@dataclass(frozen=True)
class EngineGuide:
    """What the contract carries: `guided_decoding_guide_type` and `guided_decoding_guide`."""

    type: str
    text: str


def _ebnf(text: str) -> EngineGuide:
    return EngineGuide("ebnf_grammar", text)


def unenforced_keyword(schema, path: str = "") -> str | None:
    """Path of the first keyword in `schema` the grammar would not enforce, e.g. `properties.tags.uniqueItems`."""
    if not isinstance(schema, dict):
        return None
    for keyword in UNENFORCED_KEYWORDS:
        if keyword in schema:
            return f"{path}{keyword}"
    if "multipleOf" in schema and schema.get("type") != "integer":
        return f"{path}multipleOf"  # enforced for integers only
    for keyword in _SCHEMA_MAPS:
        for name, sub in (schema.get(keyword) or {}).items() if isinstance(schema.get(keyword), dict) else ():
            found = unenforced_keyword(sub, f"{path}{keyword}.{name}.")
            if found:
                return found
    for keyword in _SCHEMA_LISTS:
        for index, sub in enumerate(schema.get(keyword) or []) if isinstance(schema.get(keyword), list) else ():
            found = unenforced_keyword(sub, f"{path}{keyword}.{index}.")
            if found:
                return found
    for keyword in _SCHEMA_VALUES:
        found = unenforced_keyword(schema.get(keyword), f"{path}{keyword}.")
        if found:
            return found
    return None


def json_schema_ebnf(schema, param: str, strict: bool = True) -> str:
    """EBNF of a JSON schema after checking it; every problem is a 400 naming `param` and the keyword."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise bad_request(f"{param} is not valid JSON: {exc}", param, "invalid_json_schema") from exc
    if not isinstance(schema, dict):
        raise bad_request(f"{param} must be a JSON schema object", param, "invalid_json_schema")
    _check_against_metaschema(schema, param)
    keyword = unenforced_keyword(schema)
    if keyword:
        raise bad_request(f"The JSON schema keyword '{keyword}' in {param} is not supported by constrained "
                          "decoding; remove it or check it after generation.", param, "unsupported_json_schema")
    try:
        return schema_to_ebnf(schema, strict=strict)
    except ValueError as exc:
        raise bad_request(f"{param} cannot be enforced: {exc}", param, "invalid_json_schema") from exc


def _check_against_metaschema(schema: dict, param: str) -> None:
    from jsonschema import Draft202012Validator, SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = ".".join(str(part) for part in exc.path) or exc.validator
        raise bad_request(f"{param} is not a valid JSON schema: '{where}': {exc.message}", param,
                          "invalid_json_schema") from exc


def _checked(kind: str, text, param: str) -> EngineGuide:
    import xgrammar

    if not isinstance(text, str) or not text:
        raise bad_request(f"{param} must be a non-empty string", param)
    try:
        grammar = xgrammar.Grammar.from_regex(text) if kind == "regex" else xgrammar.Grammar.from_ebnf(text)
    except (RuntimeError, ValueError) as exc:
        raise bad_request(f"{param} is not a valid {kind}: {first_line(exc)}", param, f"invalid_{kind}") from exc
    return _ebnf(str(grammar))


def choice_ebnf(choices, param: str) -> EngineGuide:
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
        raise bad_request(f"{param} must be a non-empty list of non-empty strings", param)
    # A JSON string literal is also an EBNF string literal (same escapes).
    return _ebnf("root ::= " + " | ".join(json.dumps(choice, ensure_ascii=False) for choice in choices))


def response_format_guide(response_format: dict | None) -> EngineGuide | None:
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return _ebnf(schema_to_ebnf({"type": "object"}, strict=False))
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec and "name" not in spec:
            raise bad_request("response_format.json_schema must be an object with a 'name' and a 'schema'",
                              "response_format.json_schema")
        schema = spec.get("schema", {"type": "object"})
        return _ebnf(json_schema_ebnf(schema, "response_format.json_schema.schema", bool(spec.get("strict"))))
    raise bad_request(f"response_format.type must be 'text', 'json_object' or 'json_schema', not {kind!r}",
                      "response_format.type")


# vLLM's `structured_outputs` object and its older top-level `guided_*` fields, by constraint.
_STRUCTURED_KEYS = {"json": "guided_json", "regex": "guided_regex", "choice": "guided_choice",
                    "grammar": "guided_grammar", "json_object": None}


def extension_guide(guided: dict, structured: dict | None) -> EngineGuide | None:
    """`guided` holds the top-level guided_* fields that are set; `structured` is `structured_outputs`."""
    given = {key: value for key, value in (structured or {}).items() if value not in (None, False)}
    unknown = sorted(set(given) - set(_STRUCTURED_KEYS) - {"disable_any_whitespace", "disable_fallback",
                                                             "disable_additional_properties", "whitespace_pattern"})
    if unknown:
        raise bad_request(f"structured_outputs.{unknown[0]} is not supported", f"structured_outputs.{unknown[0]}",
                          "unsupported_parameter")
    constraints = {f"structured_outputs.{key}": (key, value) for key, value in given.items() if key in _STRUCTURED_KEYS}
    for key, field in _STRUCTURED_KEYS.items():
        if field and guided.get(field) is not None:
            constraints[field] = (key, guided[field])
    if len(constraints) > 1:
        names = ", ".join(sorted(constraints))
        raise bad_request(f"Only one constraint may be given; got {names}.", sorted(constraints)[1])
    if not constraints:
        return None
    [(param, (key, value))] = constraints.items()
    if key == "json":
        return _ebnf(json_schema_ebnf(value, param, strict=True))
    if key == "json_object":
        return _ebnf(schema_to_ebnf({"type": "object"}, strict=False))
    if key == "choice":
        return choice_ebnf(value, param)
    return _checked("regex" if key == "regex" else "grammar", value, param)


def request_guide(response_format: dict | None, guided: dict, structured: dict | None) -> EngineGuide | None:
    """The one constraint of a request, or None; `response_format` and an extension together are a 400."""
    from_format = response_format_guide(response_format)
    from_extension = extension_guide(guided, structured)
    if from_format and from_extension:
        raise bad_request("response_format and guided decoding fields cannot be combined.", "response_format")
    return from_format or from_extension


def request_fields_guide(body) -> EngineGuide | None:
    """The constraint of a chat or text completion request's own fields (tools aside)."""
    guided = {name: getattr(body, name) for name in ("guided_json", "guided_regex", "guided_choice", "guided_grammar")}
    return request_guide(body.response_format, guided, body.structured_outputs)


def check_engine_supports(guide: EngineGuide | None, engine_kind: str) -> None:
    """The TensorRT-LLM target is built for a release without guided decoding: refuse, never ignore."""
    if guide is not None and engine_kind != "portable":
        raise bad_request(f"Constrained decoding (response_format, guided_*, tool_choice) is not available on this "
                          f"model's engine ({engine_kind}): its TensorRT-LLM release has no guided decoding.",
                          "response_format", "unsupported_parameter")


def apply_guide(plan, guide: EngineGuide | None) -> None:
    """Put the guide into the generation plan's engine request (the contract's guided-decoding inputs)."""
    if guide is not None:
        plan.request.guide_type, plan.request.guide = guide.type, guide.text
