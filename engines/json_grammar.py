"""JSON schemas as EBNF grammars (xgrammar's converter), shared by the gateway and the portable engine.

xgrammar 0.2's rule for length-bounded strings (`minLength`/`maxLength`) takes any character but a quote,
a backslash and line breaks, so other control characters, which JSON forbids unescaped in a string, slip
through; and every string rule takes UTF-8-encoded surrogates (U+D800..U+DFFF), which are not valid UTF-8
and decode to replacement characters (so a byte-level model can break `maxLength`). Both classes are
narrowed to the characters a JSON string may hold as they are.

A length-bounded string, `"\"" chars{m, n} "\""` as xgrammar writes it, is rewritten as a chain of rules
`left_k ::= "\"" | chars left_(k-1)` (k characters still allowed; the quote only once m are written).
The language is the same, but xgrammar 0.2.8 decides a token inside the counted form only by replaying
it through its parser (mlc-ai/xgrammar#852): 3-5 ms per bitmask fill inside a `maxLength: 16` string
with a 32k vocabulary, against some 0.05 ms for the chain, whose every rule has the shape of the plain
JSON string rule. The chain has a rule per character and compiles slower than the counted form beyond
`MAX_CHAINED_LENGTH` characters (1.5 s either way at 128, 6.2 s against 3.0 s at 512), which keep it.
"""
from __future__ import annotations

import json
import re

STRING_CHAR_CLASSES = (r'[^\"\\\r\n]', r'[^\0-\x1f\"\\\r\n]')  # length-bounded, unbounded
JSON_STRING_CHAR = r'[^\0-\x1f\"\\\uD800-\uDFFF]'
MAX_CHAINED_LENGTH = 128  # up to here the chain compiles as fast as the counted form (measured)
_BOUNDED_STRING = re.compile(r'"\\"" (\w+)\{(\d+), (\d+)\} "\\""')


def schema_to_ebnf(schema: str | dict, strict: bool = True, any_whitespace: bool = False) -> str:
    """EBNF (root rule `root`) of the JSON documents `schema` accepts, compact separators unless
    `any_whitespace`. Raises ValueError with xgrammar's reason for a schema it cannot convert."""
    import xgrammar

    text = schema if isinstance(schema, str) else json.dumps(schema)
    try:
        grammar = xgrammar.Grammar.from_json_schema(text, any_whitespace=any_whitespace, strict_mode=strict)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(first_line(exc)) from exc
    ebnf = str(grammar)
    for loose in STRING_CHAR_CLASSES:
        ebnf = ebnf.replace(loose, JSON_STRING_CHAR)
    return chain_bounded_strings(ebnf)


def chain_bounded_strings(ebnf: str) -> str:
    """Every `"\"" chars{m, n} "\""` with n <= MAX_CHAINED_LENGTH as a chain of n + 1 rules (see above)."""
    chains: dict[str, str] = {}

    def chained(match: re.Match) -> str:
        chars, least, most = match.group(1), int(match.group(2)), int(match.group(3))
        if most > MAX_CHAINED_LENGTH or least > most:
            return match.group(0)
        prefix = f"{chars}_{least}_{most}_left"
        if prefix not in chains:
            rules = []
            for left in range(most + 1):
                close = ['"\\""'] if most - left >= least else []  # the quote, once `least` are written
                more = [f"({chars} {prefix}_{left - 1})"] if left else []
                rules.append(f"{prefix}_{left} ::= {' | '.join(close + more)}")
            chains[prefix] = "\n".join(rules)
        return f'"\\"" {prefix}_{most}'

    rewritten = _BOUNDED_STRING.sub(chained, ebnf)
    return rewritten if not chains else rewritten.rstrip("\n") + "\n" + "\n".join(chains.values()) + "\n"


def first_line(exc: Exception) -> str:
    """xgrammar's messages start with a timestamp and a C++ source location; keep what the user needs."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(": ", 1)[1] if text.startswith("[") and ": " in text else text
