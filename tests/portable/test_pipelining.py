"""Pipelined greedy decoding on the CPU: the engine's bookkeeping (launching the next step before
reading this one, dropping the extra step of a sequence that stops, aborts in flight, falling back to
step-by-step for sampling, prefills and min_length) checked against step-by-step decoding.

CUDA graphs do not run here, so the launch API of the GPU runner (can_launch, launch_decode, greedy) is
computed eagerly by the same model on the CPU: a launch runs its forward at once and keeps its greedy
choice, and a later launch's rows may take their input token from it, as on the GPU.
"""
from __future__ import annotations

import torch

from engines.portable.sampling import SamplingParams
from tests.portable.conftest import prompt_of
from tests.portable.pipelining import EagerLaunches, assert_same_for_clients, mixed_requests, run_all

LENGTHS = [(3, 48), (10, 30), (60, 20), (17, 41), (33, 12), (5, 36), (48, 25), (24, 24)]


def test_pipelined_decoding_matches_step_by_step(make_engine):
    torch.manual_seed(0)
    engines = {pipelined: make_engine("llama", max_num_seqs=16) for pipelined in (True, False)}
    pipelined = engines[True]
    pipelined.runner, pipelined.pipelined = EagerLaunches(pipelined.runner), True
    batch = [prompt_of(n, seed=70 + i) for i, (n, _) in enumerate(LENGTHS)]
    free = engines[False].generate(batch, [SamplingParams(max_new_tokens=n, temperature=0.0) for _, n in LENGTHS])
    requests = mixed_requests(batch, free, [n for _, n in LENGTHS])
    results = {flag: run_all(engine, requests, {"r5": 9}) for flag, engine in engines.items()}
    assert_same_for_clients(results[True], results[False], "r5", free[5])
    # it did pipeline once the sampled request had left: 36 launches, 107 rows fed from the previous
    # launch's choice when this was written
    assert pipelined.runner.launches >= 20 and pipelined.runner.from_device >= 50
    for engine in engines.values():
        assert engine.num_free_blocks == engine.num_total_blocks
        assert not engine.has_unfinished()
