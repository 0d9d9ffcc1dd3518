"""Greedy grammar rows in the pipelined decode (CPU, eager launches standing in for CUDA graphs): each
launch holding grammar rows is finished after their matchers accepted the tokens being read, with their
bitmask filled then and their choice masked by the device code the GPU runs. Checked against step-by-step
decoding token for token, with rows whose grammar ends while the next step is in flight, a sampled
grammar row (no pipelining while it runs), unconstrained neighbours and an abort."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from engines.portable.sampler import argmax_is_next, masked_argmax_is_next
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
    assert pipelined.runner.masked >= 40 and pipelined.runner.from_device >= 40
    for engine in engines.values():
        assert engine.num_free_blocks == engine.num_total_blocks
        assert not engine.has_unfinished()


def test_only_greedy_unpenalised_grammar_rows_take_the_masked_argmax():
    seq = Sequence("x", [1, 2], 2, SamplingParams(max_new_tokens=4, temperature=0.0))
    seq.grammar = object()
    assert masked_argmax_is_next(seq) and not argmax_is_next(seq)
    sampled = Sequence("y", [1, 2], 2, SamplingParams(max_new_tokens=4, temperature=0.7))
    penalised = Sequence("z", [1, 2], 2, SamplingParams(max_new_tokens=4, temperature=0.0, repetition_penalty=1.2))
    assert not masked_argmax_is_next(sampled) and not masked_argmax_is_next(penalised)
