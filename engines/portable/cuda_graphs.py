"""CUDA graphs for decode steps: one graph per batch-size bucket, replayed with fresh inputs.

A decode step is the same sequence of kernels every time, so it is captured once per bucket and
replayed. All of a step's inputs (token ids, positions, cache slots, context lengths, where to take
each token id from, block tables) live in one int32 device buffer, filled from a pinned host buffer by
a single asynchronous copy. Padded rows write their K/V nowhere (slot -1) and attend to one cached
token of whatever block their table row names; their logits are dropped.

Each graph also ends with the greedy choice (argmax and its log-probability), copied back to pinned
memory behind an event. A row's input token can be taken from the previous launch's greedy choice on
the device (`source_rows`), so the engine can launch the next step before it has read this one's
tokens. Host buffers alternate between two launches, which is how far ahead the engine runs.

A launch is finished (its choices copied back behind an event) either at once, or, when some rows choose
otherwise than by the plain argmax (sampling, penalties, a grammar), once the host has appended the tokens
before it: `finish` then queues their choice on the device (for a grammar row, after its bitmask was
filled while the forward ran) in place of the greedy one before the copy, so a later launch that takes
its input tokens from this one reads that choice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from engines.portable.attention import AttentionMetadata, GpuAttentionMetadata
from engines.portable.host_copies import to_device
from engines.portable.model import CausalLM
from engines.portable.step_timeline import NO_TIMELINE

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
_FIELDS = 6  # ids, positions, slots, context lengths, source rows, LoRA slots


@dataclass
class Launch:
    """One replayed decode step: its results are ready once `event` has passed (None until finished)."""

    batch: int
    bucket: int
    buffer: int
    event: torch.cuda.Event | None = None


class DecodeGraphs:
    def __init__(self, model: CausalLM, kv_caches: list, max_batch: int, max_blocks: int, block_size: int,
                 max_context_len: int):
        from engines.portable import kernels

        self.model, self.kv_caches, self.block_size = model, kv_caches, block_size
        self.max_context_len, self.max_blocks = max_context_len, max_blocks
        device = kv_caches[0][0].device
        self.buckets = [b for b in BUCKETS if b <= max_batch] or [max_batch]
        self.largest = largest = self.buckets[-1]
        size = largest * (_FIELDS + max_blocks)
        self.inputs = torch.zeros(size, dtype=torch.int32, device=device)
        self.stagings = [torch.zeros(size, dtype=torch.int32).pin_memory() for _ in range(2)]
        self.hosts = [staging.numpy() for staging in self.stagings]
        for host in self.hosts:
            host[2 * largest:3 * largest] = -1  # slots
            host[3 * largest:4 * largest] = 1  # context lengths
            host[4 * largest:5 * largest] = -1  # source rows
            host[5 * largest:6 * largest] = -1  # LoRA slots: the base
        self.inputs.copy_(self.stagings[0])
        fields = self.inputs[:_FIELDS * largest].view(_FIELDS, largest)
        self.input_ids, self.positions, self.slots, self.context_lens, self.source_rows, self.lora_slots = fields
        self.block_tables = self.inputs[_FIELDS * largest:].view(largest, max_blocks)
        # greedy choice of the last launch per row: token id (exact in fp32) and its log-probability;
        # rows first, so a batch's results are one contiguous block (a strided copy to the host
        # would go through pageable memory and wait for the GPU)
        self.sampled = torch.zeros(largest, 2, dtype=torch.float32, device=device)
        self.results = [torch.zeros(largest, 2, dtype=torch.float32).pin_memory() for _ in range(2)]
        self.next_buffer = 0
        self.bitmasks: list[torch.Tensor] = []  # pinned grammar bitmasks, one per host buffer, made on first use
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.timeline = NO_TIMELINE  # LLMEngine.record_timeline
        self.logits: dict[int, torch.Tensor] = {}
        kv_heads = model.config.num_kv_heads
        pool = None
        for batch in reversed(self.buckets):  # largest first, so the smaller ones share its memory pool
            splits = kernels.choose_num_splits(batch, kv_heads, max_context_len, device)
            meta = self._meta(batch, splits)
            self._forward(batch, meta)  # warm up: compile the Triton kernels outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[batch] = self._forward(batch, meta)
            pool = graph.pool()
            self.graphs[batch] = graph
        torch.cuda.synchronize()

    def _meta(self, batch: int, splits: int) -> AttentionMetadata:
        gpu = GpuAttentionMetadata(self.block_tables[:batch], self.context_lens[:batch], None, splits)
        return AttentionMetadata(
            slot_mapping=self.slots[:batch], block_tables=self.block_tables[:batch],
            context_lens=self.context_lens[:batch], query_lens=self.context_lens[:batch],
            token_seq=self.positions[:batch], token_pos_in_query=self.positions[:batch],
            max_query_len=1, max_context_len=self.max_context_len, block_size=self.block_size,
            sliding_window=self.model.config.sliding_window, gpu=gpu)

    def _forward(self, batch: int, meta: AttentionMetadata) -> torch.Tensor:
        source = self.source_rows[:batch]
        previous = self.sampled[source.clamp(min=0).long(), 0].to(torch.int32)
        input_ids = torch.where(source >= 0, previous, self.input_ids[:batch])
        lora_slots = None if self.model.lora is None else self.lora_slots[:batch]
        hidden = self.model.forward(input_ids, self.positions[:batch], meta, self.kv_caches, lora_slots)
        logits = self.model.logits(hidden)
        chosen = logits.argmax(dim=-1)
        self.sampled[:batch, 0].copy_(chosen)
        self.sampled[:batch, 1].copy_(logits.gather(1, chosen[:, None])[:, 0] - logits.logsumexp(dim=-1))
        return logits

    def fits(self, batch: int, max_blocks: int) -> bool:
        return batch <= self.largest and max_blocks <= self.max_blocks

    def launch(self, input_ids: list[int], positions: list[int], slots: list[int], block_tables: list[list[int]],
               source_rows: list[int] | None = None, lora_slots: list[int] | None = None,
               finish: bool = True) -> Launch:
        """Replays the decode step for B sequences given as host-side lists. A row whose source row
        is >= 0 takes its input token from that row of the previous launch's greedy choice; `lora_slots`
        gives each row's adapter slot (-1: the base). Without `finish`, the caller finishes the launch
        (`finish`) before the next one."""
        batch, largest = len(positions), self.largest
        bucket = next(b for b in self.buckets if b >= batch)
        buffer, self.next_buffer = self.next_buffer, 1 - self.next_buffer
        # this buffer's last copy belonged to the launch before the previous one, which the engine
        # has read back (waiting on its event) before launching again
        host = self.hosts[buffer]
        host[:batch] = input_ids
        host[largest:largest + batch] = positions
        host[2 * largest:2 * largest + batch] = slots
        host[2 * largest + batch:2 * largest + bucket] = -1
        host[3 * largest:3 * largest + batch] = np.asarray(positions, dtype=np.int32) + 1
        host[3 * largest + batch:3 * largest + bucket] = 1
        host[4 * largest:4 * largest + batch] = -1 if source_rows is None else source_rows
        host[5 * largest:5 * largest + batch] = -1 if lora_slots is None else lora_slots
        tables = host[_FIELDS * largest:].reshape(largest, self.max_blocks)
        for row, table in enumerate(block_tables):
            tables[row, :len(table)] = table
        # entries past a row's context are never read, and padded rows read column 0, always a valid id
        used = _FIELDS * largest + bucket * self.max_blocks
        self.timeline.mark_device("forward start")
        self.inputs[:used].copy_(self.stagings[buffer][:used], non_blocking=True)
        self.graphs[bucket].replay()
        self.timeline.mark_device("forward end")
        launch = Launch(batch, bucket, buffer)
        if finish:
            self.finish(launch)
        return launch

    def host_bitmask(self, launch: Launch, vocab_size: int) -> torch.Tensor:
        """Pinned memory for the grammar bitmask of `launch`'s rows. Its buffer's last copy to the device
        was queued two launches ago, and the engine has waited for the launch after that one since."""
        if not self.bitmasks:
            words = -(-vocab_size // 32)
            self.bitmasks = [torch.zeros(self.largest, words, dtype=torch.int32).pin_memory() for _ in range(2)]
        return self.bitmasks[launch.buffer]

    @torch.inference_mode()
    def finish(self, launch: Launch, rows: list[int] | None = None,
               choose: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Queue the copy of the launch's choices to the host, behind an event; the listed rows first take
        `choose(their logits)` (float32 [rows, 2]: token id, log-probability) in place of the greedy choice."""
        batch = launch.batch
        self.timeline.mark_device("sampler start")
        if rows:
            logits = self.logits[launch.bucket][:batch]
            if len(rows) == batch:
                self.sampled[:batch] = choose(logits)
            else:
                index = to_device(rows, logits.device, torch.long)
                self.sampled[index] = choose(logits.index_select(0, index))
        self.results[launch.buffer][:batch].copy_(self.sampled[:batch], non_blocking=True)
        self.timeline.mark_device("sampler end")
        launch.event = torch.cuda.Event()
        launch.event.record()

    def logits_of(self, launch: Launch) -> torch.Tensor:
        """Logits [B, vocab] of a launch; valid until the next launch of the same bucket."""
        return self.logits[launch.bucket][:launch.batch]

    def greedy(self, launch: Launch) -> tuple[list[int], list[float]]:
        """The launch's greedy tokens and their log-probabilities (waits for it)."""
        launch.event.synchronize()
        result = self.results[launch.buffer][:launch.batch]
        return result[:, 0].long().tolist(), result[:, 1].tolist()
