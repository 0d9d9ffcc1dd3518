"""Length-bounded JSON strings as chained rules (engines/json_grammar.py): the same language and the same
next-token masks as xgrammar's counted form, step for step."""
from __future__ import annotations

import pytest
import torch
import xgrammar
from transformers import AutoTokenizer

from engines import json_grammar

BOUNDED = {"type": "object",
           "properties": {"a": {"type": "string", "minLength": 2, "maxLength": 5},
                          "b": {"type": "string", "maxLength": 16},
                          "c": {"type": "array", "items": {"type": "string", "minLength": 3, "maxLength": 3}}},
           "required": ["a", "b", "c"], "additionalProperties": False}


@pytest.fixture(scope="module")
def compiler(demo_checkpoints):
    tokenizer = AutoTokenizer.from_pretrained(str(demo_checkpoints["llama"]))
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, stop_token_ids=[tokenizer.eos_token_id])
    return xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False), info.vocab_size


def counted_ebnf(schema: dict, monkeypatch) -> str:
    with monkeypatch.context() as patch:
        patch.setattr(json_grammar, "MAX_CHAINED_LENGTH", -1)
        return json_grammar.schema_to_ebnf(schema)


def test_bounded_strings_become_chains_and_long_bounds_stay_counted(monkeypatch):
    chained = json_grammar.schema_to_ebnf(BOUNDED)
    assert "{2, 5}" not in chained and "{0, 16}" not in chained and "{3, 3}" not in chained
    assert "{2, 5}" in counted_ebnf(BOUNDED, monkeypatch)
    long = json_grammar.schema_to_ebnf({"type": "string", "maxLength": json_grammar.MAX_CHAINED_LENGTH + 1})
    assert f"{{0, {json_grammar.MAX_CHAINED_LENGTH + 1}}}" in long


@pytest.mark.parametrize(("text", "ok"), [('{"a": "xy", "b": "", "c": []}', True),
                                          ('{"a": "xyzuv", "b": "0123456789abcdef", "c": ["abc", "def"]}', True),
                                          ('{"a": "x", "b": "", "c": []}', False),
                                          ('{"a": "xyzuvw", "b": "", "c": []}', False),
                                          ('{"a": "xy", "b": "0123456789abcdefg", "c": []}', False),
                                          ('{"a": "xy", "b": "", "c": ["ab"]}', False),
                                          ('{"a": "xy", "b": "", "c": ["abcd"]}', False)])
def test_chained_strings_keep_the_bounds(compiler, text, ok):
    grammar = compiler[0].compile_grammar(json_grammar.schema_to_ebnf(BOUNDED))
    matcher = xgrammar.GrammarMatcher(grammar)
    assert (matcher.accept_string(text) and matcher.is_completed()) == ok


@pytest.mark.parametrize("seed", range(4))
def test_chained_and_counted_forms_give_the_same_masks(compiler, monkeypatch, seed):
    compile_grammar, vocab = compiler[0].compile_grammar, compiler[1]
    matchers = [xgrammar.GrammarMatcher(compile_grammar(ebnf))
                for ebnf in (json_grammar.schema_to_ebnf(BOUNDED), counted_ebnf(BOUNDED, monkeypatch))]
    masks = [xgrammar.allocate_token_bitmask(1, vocab) for _ in matchers]
    generator = torch.Generator().manual_seed(seed)
    steps = 0
    while not matchers[0].is_terminated():
        for matcher, mask in zip(matchers, masks, strict=True):
            matcher.fill_next_token_bitmask(mask, 0)
        assert torch.equal(masks[0], masks[1]), steps
        allowed = ((masks[0][0, :, None] >> torch.arange(32, dtype=torch.int32)) & 1).reshape(-1)[:vocab]
        token = int(torch.multinomial(allowed.float(), 1, generator=generator))
        assert all(matcher.accept_token(token) for matcher in matchers)
        steps += 1
    assert matchers[1].is_terminated() and steps > 10
