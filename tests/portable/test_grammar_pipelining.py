"""Grammar rows in the pipelined decode (CPU, eager launches standing in for CUDA graphs): a launch holding
them is finished after their matchers accepted the tokens being read, with their bitmask filled then and
their choice made by the sampler's device code (`choose`), as on the GPU. Checked against step-by-step
decoding token for token, with rows whose grammar ends while the next step is in flight, a sampled grammar
row, unconstrained neighbours and an abort."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from engines.portable.sampler import argmax_is_next, chosen_on_device
from engines.portable.sampling import SamplingParams
from engines.portable.sequence import Sequence
from tests.portable.pipelining import EagerLaunches, assert_grammar_rows_match, grammar_requests, run_all


@pytest.fixture()
def tokenizer(demo_checkpoints):
    return AutoTokenizer.from_pretrained(str(demo_checkpoints["llama"]))


def test_grammar_rows_pipeline_and_match_step_by_step(make_engine, tokenizer):
    engines = {flag: make_engine("llama", max_num_seqs=16) for flag in (True, False)}
    pipelined = engines[True]
    pipelined.runner, pipelined.pipelined = EagerLaunches(pipelined.runner), True
    requests = grammar_requests(tokenizer.eos_token_id)
    results = {flag: run_all(engine, requests, {"aborted": 9}) for flag, engine in engines.items()}
    assert_grammar_rows_match(results[True], results[False], tokenizer)
    # the grammar rows were decoded by pipelined launches: masked on the "device", fed to the next launch
    assert pipelined.runner.chosen >= 40 and pipelined.runner.from_device >= 40
    for engine in engines.values():
        assert engine.num_free_blocks == engine.num_total_blocks
        assert not engine.has_unfinished()


def test_rows_chosen_on_device_are_all_but_beams_and_logits_rows():
    grammar = Sequence("x", [1, 2], 2, SamplingParams(max_new_tokens=4, temperature=0.0))
    grammar.grammar = object()
    sampled = Sequence("y", [1, 2], 2, SamplingParams(max_new_tokens=4, temperature=0.7, repetition_penalty=1.2))
    assert chosen_on_device(grammar) and chosen_on_device(sampled)
    assert not argmax_is_next(grammar) and not argmax_is_next(sampled)
    beams = Sequence("z", [1, 2], 2, SamplingParams(max_new_tokens=4, beam_width=2))
    rows = Sequence("w", [1, 2], 2, SamplingParams(max_new_tokens=4, return_generation_logits=True))
    assert not chosen_on_device(beams) and not chosen_on_device(rows)


def test_timeline_books_the_pipelined_steps_host_phases(make_engine, tokenizer):
    engine = make_engine("llama", max_num_seqs=16)
    engine.runner, engine.pipelined = EagerLaunches(engine.runner), True
    timeline = engine.record_timeline()
    run_all(engine, grammar_requests(tokenizer.eos_token_id), {})
    host = timeline.summary()["host"]
    # each pipelined step: tokens read, grammars advanced, tokens appended, the next launch's bitmask filled
    for pair in ("launched ahead -> tokens read", "tokens read -> grammars advanced",
                 "grammars advanced -> tokens appended", "tokens appended -> bitmask filled",
                 "bitmask filled -> sampler queued"):
        assert host[pair]["count"] >= 10 and host[pair]["mean_ms"] >= 0, pair
    assert timeline.summary()["device"] == {}  # no CUDA events on the CPU
