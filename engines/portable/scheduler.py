"""Continuous batching: which sequences run how many tokens in the next step.

Every step, running decodes go first (one token each), then the next chunks of running prefills
that did not fit in one step, then waiting sequences join while the token budget and the batch size
allow. When KV
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

    def _schedule_running(self, seq: Sequence, budget: int, scheduled: set[Sequence]) -> int:
        """Blocks for the next tokens of a running sequence, preempting the newest sequences not yet
        scheduled this step if needed; returns how many tokens it runs (0 if it was preempted)."""
        count = min(seq.num_tokens - seq.num_computed_tokens, budget)
        while not self.blocks.can_allocate(seq, count):
            victim = next(other for other in reversed(self.running) if other is seq or other not in scheduled)
            self._preempt(victim)
            if victim is seq:
                return 0
        self.blocks.allocate(seq, count)
        return count

    def _admit(self, seq: Sequence, budget: int) -> int:
        """Start a waiting sequence from what the prefix cache holds; returns its tokens this step."""
        reused = self.blocks.reuse_prefix(seq)
        count = min(seq.num_tokens - seq.num_computed_tokens, budget)
        if not self.blocks.can_allocate(seq, count):
            self.blocks.free_sequence(seq)
            return 0
        self.blocks.allocate(seq, count)
        self.blocks.num_reused_tokens += reused
        return count

    def schedule(self) -> list[tuple[Sequence, int]]:
        """Decodes first (one token each, so they never wait behind a long prompt), then the next
        chunks of running prefills, then waiting sequences while the token budget lasts."""
        budget = self.config.max_num_batched_tokens
        # Every running sequence fits its decode token into the budget.
        max_running = min(self.config.max_num_seqs, self.config.max_num_batched_tokens)
        scheduled: list[tuple[Sequence, int]] = []
        done: set[Sequence] = set()
        decodes = [seq for seq in self.running if seq.num_tokens - seq.num_computed_tokens == 1]
        prefills = [seq for seq in self.running if seq.num_tokens - seq.num_computed_tokens > 1]
        for seq in decodes + prefills:
            if seq.status is not Status.RUNNING or budget == 0:
                continue  # preempted earlier in this loop, or no budget left
            if seq.num_tokens - seq.num_computed_tokens == 1 and self.blocks.blocks_needed(seq, 1) == 0:
                count = 1  # the common case, kept cheap: a decode whose last block has room
            else:
                count = self._schedule_running(seq, budget, done)
            if count:
                scheduled.append((seq, count))
                done.add(seq)
                budget -= count
        adapters = {id(seq.lora) for seq in self.running if seq.lora is not None}
        while self.waiting and budget > 0 and len(self.running) < max_running:
            seq = self.waiting[0]
            if seq.lora is not None and id(seq.lora) not in adapters:
                if len(adapters) >= self.config.max_loras:
                    break  # its adapter needs a device slot that running sequences hold
                adapters.add(id(seq.lora))
            count = self._admit(seq, budget)
            if count == 0:
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            scheduled.append((seq, count))
            budget -= count
        return scheduled
