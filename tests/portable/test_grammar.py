"""Grammar-constrained decoding in the portable engine: on random weights the grammar does all the work."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from transformers import AutoTokenizer

from engines.portable.grammar import Guide, advance
from engines.portable.sampler import argmax_is_next
from engines.portable.sampling import SamplingParams
from engines.portable.sequence import Sequence
from tests.portable.conftest import prompt_of

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z][a-z]{1,8}$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "address": {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                                                     "score": {"type": "number", "minimum": -1, "maximum": 1}},
                    "required": ["zip", "score"], "additionalProperties": False},
    },
    "required": ["name", "age", "role", "tags", "address"],
    "additionalProperties": False,
}


@pytest.fixture()
def tokenizer(demo_checkpoints):
    return AutoTokenizer.from_pretrained(str(demo_checkpoints["llama"]))


def _params(guide: Guide | None, eos: int, **overrides) -> SamplingParams:
    return SamplingParams(**{"max_new_tokens": 200, "temperature": 1.0, "end_id": eos, "guide": guide, **overrides})


def test_sampled_json_schema_requests_validate_and_share_a_batch_with_free_ones(make_engine, tokenizer):
    engine = make_engine("llama")
    eos = tokenizer.eos_token_id
    guide = Guide("json_schema", json.dumps(PERSON))
    prompts = [prompt_of(12, seed=index) for index in range(6)]
    params = [_params(guide if index % 2 == 0 else None, eos, seed=index, max_new_tokens=160) for index in range(6)]
    outputs = engine.generate(prompts, params)
    for index, tokens in enumerate(outputs):
        if index % 2:
            continue
        document = json.loads(tokenizer.decode(tokens))
        jsonschema.validate(document, PERSON)
    stats = engine.grammars().stats
    assert stats.compiled == 1 and stats.cache_hits == 2


def test_greedy_requests_under_regex_and_ebnf(make_engine, tokenizer):
    engine = make_engine("llama")
    eos = tokenizer.eos_token_id
    guides = [Guide("regex", r"(yes|no)-[0-9]{3}"), Guide("ebnf_grammar", 'root ::= "A" ("b" | "c")+ "!"')]
    outputs = engine.generate([prompt_of(8, seed=1), prompt_of(8, seed=2)],
                              [_params(guide, eos, temperature=0.0, max_new_tokens=40) for guide in guides])
    assert re.fullmatch(r"(yes|no)-[0-9]{3}", tokenizer.decode(outputs[0]))
    assert re.fullmatch(r"A[bc]+!", tokenizer.decode(outputs[1]))


def test_json_mode_output_stays_inside_the_json_grammar(make_engine, tokenizer):
    engine = make_engine("llama")
    guide = Guide("json")
    [tokens] = engine.generate([prompt_of(8, seed=3)], [_params(guide, tokenizer.eos_token_id, seed=3,
                                                                 max_new_tokens=24)])
    assert tokenizer.decode(tokens)[:1] in "{["
    replay = engine.grammars().matcher(guide)
    assert all(replay.accept(token) for token in tokens)


def test_structural_tag_constrains_what_follows_a_trigger(make_engine, tokenizer):
    engine = make_engine("llama")
    tag = {"structures": [{"begin": "<f>", "schema": {"type": "object", "properties": {"x": {"enum": [1, 2]}},
                                                        "required": ["x"], "additionalProperties": False},
                           "end": "</f>"}], "triggers": ["<f>"]}
    state = engine.grammars(tokenizer.eos_token_id).matcher(Guide("structural_tag", json.dumps(tag)))
    for token in tokenizer.encode("some text <f>", add_special_tokens=False):
        assert state.accept(token)
    assert not state.matcher.accept_string('{"x": 3}')  # inside the tag only the schema is allowed
    for token in tokenizer.encode('{"x": 2}</f>', add_special_tokens=False):
        assert state.accept(token)
    assert state.matcher.accept_string('{"x": 3}')  # free text again


@pytest.mark.parametrize(("call", "ok"), [('{"city": "Paris", "n": 3}', True), ('{ "city":"Paris" ,"n":3 }', True),
                                          ('{"city": "Parisxxxxxxxxxxxxx", "n": 3}', False),
                                          ('{"city": "P", "n": 3, "z": 1}', False)])
def test_structural_tag_schemas_keep_bounds_and_free_whitespace(make_engine, tokenizer, call, ok):
    """The tag's schema goes through schema_to_ebnf (bounded strings as chains) with any whitespace, as
    xgrammar's own structural tags allow."""
    engine = make_engine("llama")
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}, "n": {"type": "integer"}},
              "required": ["city", "n"], "additionalProperties": False}
    tag = {"structures": [{"begin": "<tool_call>", "schema": schema, "end": "</tool_call>"}],
           "triggers": ["<tool_call>"]}
    state = engine.grammars(tokenizer.eos_token_id).matcher(Guide("structural_tag", json.dumps(tag)))
    assert state.matcher.accept_string(f"Let me look. <tool_call>{call}</tool_call> Done.") == ok


def test_invalid_guides_are_refused_when_added(make_engine, tokenizer):
    engine = make_engine("llama")
    eos = tokenizer.eos_token_id
    with pytest.raises(ValueError, match="invalid json_schema guide: Unsupported type"):
        engine.add_request("a", [1, 2], _params(Guide("json_schema", '{"type": "frob"}'), eos))
    with pytest.raises(ValueError, match="invalid regex guide"):
        engine.add_request("b", [1, 2], _params(Guide("regex", "(?<=a)b"), eos))
    with pytest.raises(ValueError, match="unknown guided decoding guide type"):
        engine.add_request("c", [1, 2], _params(Guide("xml", "x"), eos))
    assert not engine.has_unfinished()


def test_grammar_requests_leave_the_greedy_fast_path():
    params = SamplingParams(max_new_tokens=4, temperature=0.0)
    seq = Sequence("x", [1, 2], 2, params)
    assert argmax_is_next(seq)
    seq.grammar = object()
    assert not argmax_is_next(seq)


def test_batched_advance_ends_rows_on_stop_tokens_and_rejected_ones(make_engine, tokenizer):
    engine = make_engine("llama")
    eos = tokenizer.eos_token_id
    grammars = engine.grammars(eos)
    done, going, wrong = (grammars.matcher(Guide("regex", "ab")) for _ in range(3))
    for token in tokenizer.encode("ab", add_special_tokens=False):
        assert done.accept(token)
    a = tokenizer.encode("a", add_special_tokens=False)[0]
    z = tokenizer.encode("z", add_special_tokens=False)[0]
    assert advance([done, going, wrong], [eos, a, z]) == [False, True, False]
    assert wrong.accept(a)  # a rejected token leaves the matcher as it was


NO_TRITON_RUN = """
import sys
from pathlib import Path
try:
    import triton  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("triton was importable")
from transformers import AutoTokenizer
from engines.portable.config import EngineConfig
from engines.portable.engine import LLMEngine
from engines.portable.grammar import Guide
from engines.portable.sampling import SamplingParams
checkpoint = Path(sys.argv[1])
tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
engine = LLMEngine.from_checkpoint(checkpoint, EngineConfig())
guide = Guide("regex", "(yes|no)-[0-9]{3}")
params = [SamplingParams(max_new_tokens=40, temperature=t, seed=1, end_id=tokenizer.eos_token_id, guide=guide)
          for t in (0.0, 1.0)]
for tokens in engine.generate([[1, 5, 6, 7], [1, 8, 9]], params):
    print(tokenizer.decode(tokens))
"""


def test_constrained_decoding_on_cpu_needs_no_openai_triton(demo_checkpoints, tmp_path):
    """xgrammar 0.2.8 requires OpenAI's `triton` on Linux x86-64 (1 GiB installed) for its GPU kernel only:
    with `import triton` failing, the CPU engine still decodes under a grammar (what README's note on a
    CPU-only install relies on)."""
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "__init__.py").write_text('raise ImportError("triton is not installed")\n')
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}
    result = subprocess.run([sys.executable, "-c", NO_TRITON_RUN, str(demo_checkpoints["llama"])], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(re.fullmatch(r"(yes|no)-[0-9]{3}", line) for line in lines), lines
