"""Continuous batching: which sequences run how many tokens in the next step.

Every step, running sequences go first (one token for a decode, the next chunk for a prefill that
did not fit), then waiting ones join while the token budget and the batch size allow. When KV
blocks run out, the most recently admitted running sequence is preempted: its blocks are freed and it
goes back to the front of the queue, to be recomputed later.
"""
from __future__ import annotations

from collections import deque

from engines.portable.block_manager import BlockManager
from engines.portable.config import EngineConfig
from engines.portable.sequence import Sequence, Status


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager):
        self.config, self.blocks = config, block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free_sequence(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free_sequence(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def schedule(self) -> list[tuple[Sequence, int]]:
        budget = self.config.max_num_batched_tokens
        scheduled: list[tuple[Sequence, int]] = []
        for seq in list(self.running):
            if seq not in self.running or budget == 0:
                continue  # preempted earlier in this loop, or no budget left
            count = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.blocks.can_allocate(seq, count):
                self._preempt(self.running[-1])
                if seq not in self.running:
                    break
            if seq in self.running:
                self.blocks.allocate(seq, count)
                scheduled.append((seq, count))
                budget -= count
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            self.blocks.reuse_prefix(seq)
            count = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if not self.blocks.can_allocate(seq, count):
                self.blocks.free_sequence(seq)
                break
            self.blocks.allocate(seq, count)
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            scheduled.append((seq, count))
            budget -= count
        return scheduled
