"""Scheduler: decodes before prefill chunks, a token budget smaller than the batch, safe preemption."""
from __future__ import annotations

import pytest

from engines.portable.block_manager import BlockManager
from engines.portable.config import EngineConfig
from engines.portable.sampling import SamplingParams
from engines.portable.scheduler import Scheduler
from engines.portable.sequence import Sequence
from tests.portable.conftest import prompt_of

LENGTHS = [(3, 30), (40, 20), (17, 25), (60, 10), (9, 28), (33, 15)]


def request(name: str, length: int) -> Sequence:
    return Sequence(name, list(range(1, length + 1)), length, SamplingParams(max_new_tokens=8))


def run_step(scheduler: Scheduler, scheduled: list[tuple[Sequence, int]]) -> None:
    """What the engine does after the forward: count the computed tokens, append a token if sampled."""
    for seq, count in scheduled:
        seq.num_computed_tokens += count
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(7)


def test_decodes_go_before_a_long_prefill_chunk():
    scheduler = Scheduler(EngineConfig(max_num_batched_tokens=8), BlockManager(64, 4))
    short = request("short", 3)
    scheduler.add(short)
    run_step(scheduler, scheduler.schedule())
    scheduler.add(request("long", 40))
    first = scheduler.schedule()
    assert [(seq.request_id, count) for seq, count in first] == [("short", 1), ("long", 7)]
    run_step(scheduler, first)
    assert [(seq.request_id, count) for seq, count in scheduler.schedule()] == [("short", 1), ("long", 7)]


def test_a_token_budget_smaller_than_the_batch_still_runs_every_decode():
    scheduler = Scheduler(EngineConfig(max_num_batched_tokens=4, max_num_seqs=64), BlockManager(64, 4))
    for index in range(6):
        scheduler.add(request(f"r{index}", 2))
    for _ in range(12):
        scheduled = scheduler.schedule()
        assert sum(count for _, count in scheduled) <= 4
        run_step(scheduler, scheduled)
    assert len(scheduler.running) == 4  # admission stops where the decodes would overflow the budget
    decodes = scheduler.schedule()
    assert len(decodes) == 4 and all(count == 1 for _, count in decodes)


def test_preemption_never_takes_a_sequence_already_scheduled_this_step():
    blocks = BlockManager(num_blocks=6, block_size=4)
    scheduler = Scheduler(EngineConfig(max_num_batched_tokens=4), blocks)
    for name, length in [("a", 3), ("b", 3), ("c", 10)]:
        scheduler.add(request(name, length))
    for _ in range(20):
        scheduled = scheduler.schedule()
        for seq, count in scheduled:
            assert seq in scheduler.running
            assert len(seq.block_table) * 4 >= seq.num_computed_tokens + count
        run_step(scheduler, scheduled)
    assert scheduler.num_preemptions > 0


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_preemption_with_chunked_prefill_keeps_greedy_fidelity(kind, make_engine, hf_greedy):
    prompts = [prompt_of(length, seed=40 + i) for i, (length, _) in enumerate(LENGTHS)]
    engine = make_engine(kind, num_kv_blocks=14, block_size=8, max_num_batched_tokens=16)
    outputs = engine.generate(prompts, [SamplingParams(max_new_tokens=new, temperature=0.0) for _, new in LENGTHS])
    assert engine.scheduler.num_preemptions > 0
    for prompt, (_, new), output in zip(prompts, LENGTHS, outputs, strict=True):
        assert output == hf_greedy(kind, prompt, new)
    assert engine.num_free_blocks == engine.num_total_blocks
