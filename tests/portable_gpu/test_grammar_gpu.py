"""Constrained decoding on a CUDA GPU: the mask applies to the logits after the CUDA-graph forward, greedy
grammar rows stay in the pipelined decode (chosen on the device) with the same tokens as step by step, and
unconstrained neighbours in the batch are unchanged."""
from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from transformers import AutoTokenizer

from engines.portable import kernels
from engines.portable.config import EngineConfig
from engines.portable.engine import LLMEngine
from engines.portable.grammar import Guide
from engines.portable.sampling import SamplingParams
from tests.portable.pipelining import assert_grammar_rows_match, grammar_requests, run_all

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"needs a CUDA GPU: {kernels.unavailable_reason()}")

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "tag": {"enum": ["a", "b"]},
                                           "word": {"type": "string", "pattern": "^[a-z]{2,6}$"}},
          "required": ["n", "tag", "word"], "additionalProperties": False}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_grammar_rows_validate_and_free_rows_are_unchanged(demo_checkpoints, temperature):
    tokenizer = AutoTokenizer.from_pretrained(str(demo_checkpoints["llama"]))
    config = EngineConfig(device="cuda", dtype="float32", kv_cache_memory_bytes=64 << 20)
    engine = LLMEngine.from_checkpoint(demo_checkpoints["llama"], config)
    assert engine.runner.graphs is not None  # CUDA graphs stay on for the forward
    generator = torch.Generator().manual_seed(0)
    prompts = [[1] + torch.randint(5, 600, (12,), generator=generator).tolist() for _ in range(8)]
    guide = Guide("json_schema", json.dumps(SCHEMA))

    def params(guided: bool, seed: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=60, temperature=temperature, seed=seed, end_id=tokenizer.eos_token_id,
                              guide=guide if guided else None)

    free = engine.generate(prompts, [params(False, index) for index in range(8)])
    mixed = engine.generate(prompts, [params(index % 2 == 0, index) for index in range(8)])
    for tokens in mixed[0::2]:
        jsonschema.validate(json.loads(tokenizer.decode(tokens)), SCHEMA)
    # Unconstrained rows are not masked: the same tokens as in an all-free batch while the batches still
    # hold the same rows (later, grammar rows end early and the batch shapes differ).
    assert [tokens[:4] for tokens in mixed[1::2]] == [tokens[:4] for tokens in free[1::2]]


def test_pipelined_grammar_rows_stay_valid_and_match_step_by_step(demo_checkpoints):
    """Grammar rows in pipelined CUDA-graph launches (bitmask filled on the host while the forward runs,
    the sampler queued on the device, its choice fed to the next launch): token for token what step-by-step
    decoding gives, every output valid, every block back (tests/portable/test_grammar_pipelining.py: the
    same on CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    tokenizer = AutoTokenizer.from_pretrained(str(demo_checkpoints["llama"]))
    engines = {flag: LLMEngine.from_checkpoint(demo_checkpoints["llama"], EngineConfig(
        device="cuda", dtype="float32", pipeline_decode=flag, max_num_seqs=16, kv_cache_memory_bytes=64 << 20))
        for flag in (True, False)}
    assert engines[True].pipelined and not engines[False].pipelined
    runner, chosen = engines[True].runner, []
    finish = runner.finish

    def counting_finish(launch, rows=None, choose=None):
        chosen.append(len(rows or []))
        finish(launch, rows, choose)

    runner.finish = counting_finish
    requests = grammar_requests(tokenizer.eos_token_id)
    results = {flag: run_all(engine, requests, {"aborted": 9}) for flag, engine in engines.items()}
    assert_grammar_rows_match(results[True], results[False], tokenizer)
    assert sum(chosen) >= 40, chosen  # grammar rows were chosen on the device behind pipelined launches
    for engine in engines.values():
        assert engine.num_free_blocks == engine.num_total_blocks
        assert not engine.has_unfinished()


def test_timeline_times_forwards_samplers_and_host_phases(demo_checkpoints):
    """engine.record_timeline: CUDA events around every forward and sampler, host marks of each phase."""
    tokenizer = AutoTokenizer.from_pretrained(str(demo_checkpoints["llama"]))
    engine = LLMEngine.from_checkpoint(demo_checkpoints["llama"], EngineConfig(
        device="cuda", dtype="float32", max_num_seqs=16, kv_cache_memory_bytes=64 << 20))
    timeline = engine.record_timeline()
    run_all(engine, grammar_requests(tokenizer.eos_token_id), {})
    summary = timeline.summary()
    device, host = summary["device"], summary["host"]
    for pair in ("forward start -> forward end", "forward end -> sampler start", "sampler start -> sampler end",
                 "sampler end -> forward start"):
        assert device[pair]["count"] >= 10 and device[pair]["mean_ms"] >= 0, pair
    assert device["forward start -> forward end"]["mean_ms"] > 0
    assert host["tokens appended -> bitmask filled"]["count"] >= 10
