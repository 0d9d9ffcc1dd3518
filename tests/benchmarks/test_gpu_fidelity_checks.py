"""benchmarks/gpu_fidelity.py compares like with like: the engine's answers as generate writes them."""
from __future__ import annotations

import math

from benchmarks.gpu_fidelity import CHECKS, as_generated, verdict

EOS = 2


def test_the_dropped_end_token_is_restored_only_where_the_engine_stopped_on_it():
    assert as_generated([5, 6], max_new=4, eos=EOS) == [5, 6, EOS]  # stopped early: on the end token
    assert as_generated([5, 6, 7, 8], max_new=4, eos=EOS) == [5, 6, 7, 8]  # ran to max_new
    assert as_generated([5, EOS], max_new=4, eos=EOS) == [5, EOS]


def _result(engine: list, half: list) -> dict:
    chats = [{"engine_vs_gold": e, "transformers_bf16_vs_gold": h} for e, h in zip(engine, half, strict=True)]
    return {"chats": chats, "logprobs": {"engine_vs_gold": {"max_abs": 0.1, "mean_abs": 0.01}},
            "perplexity": {"engine": 10.0, "gold_float32": 10.0}}


def test_identical_chats_are_judged_against_transformers_own_bfloat16():
    tie = {"position": 3, "gap": 0.1}
    ok = verdict(_result([None, None, tie, tie], [None, tie, tie, tie]))
    assert all(check["ok"] for check in ok.values())
    worse = verdict(_result([tie, tie, tie, tie], [None, None, tie, tie]))
    assert not worse["greedy_identical_below_transformers_half"]["ok"]
    far = verdict(_result([None, {"position": 1, "gap": math.inf}], [None, None]))
    assert not far["greedy_worst_divergence_gap_nats"]["ok"]
    assert CHECKS["greedy_diverges_only_at_near_ties_nats"] <= CHECKS["logprob_max_abs_nats"]
