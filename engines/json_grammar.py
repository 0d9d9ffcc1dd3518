"""JSON schemas as EBNF grammars (xgrammar's converter), shared by the gateway and the portable engine.

xgrammar 0.2's rule for length-bounded strings (`minLength`/`maxLength`) takes any character but a quote,
a backslash and line breaks, so other control characters, which JSON forbids unescaped in a string, slip
through; and every string rule takes UTF-8-encoded surrogates (U+D800..U+DFFF), which are not valid UTF-8
and decode to replacement characters (so a byte-level model can break `maxLength`). Both classes are
narrowed to the characters a JSON string may hold as they are.
"""
from __future__ import annotations

import json

STRING_CHAR_CLASSES = (r'[^\"\\\r\n]', r'[^\0-\x1f\"\\\r\n]')  # length-bounded, unbounded
JSON_STRING_CHAR = r'[^\0-\x1f\"\\\uD800-\uDFFF]'


def schema_to_ebnf(schema: str | dict, strict: bool = True) -> str:
    """EBNF (root rule `root`) of the JSON documents `schema` accepts, compact separators.
    Raises ValueError with xgrammar's reason for a schema it cannot convert."""
    import xgrammar

    text = schema if isinstance(schema, str) else json.dumps(schema)
    try:
        grammar = xgrammar.Grammar.from_json_schema(text, any_whitespace=False, strict_mode=strict)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(first_line(exc)) from exc
    ebnf = str(grammar)
    for loose in STRING_CHAR_CLASSES:
        ebnf = ebnf.replace(loose, JSON_STRING_CHAR)
    return ebnf


def first_line(exc: Exception) -> str:
    """xgrammar's messages start with a timestamp and a C++ source location; keep what the user needs."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(": ", 1)[1] if text.startswith("[") and ": " in text else text
