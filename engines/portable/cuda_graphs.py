"""CUDA graphs for decode steps: one graph per batch-size bucket, replayed with fresh inputs.

A decode step is the same sequence of kernels every time, so it is captured once per bucket and
replayed. All of a step's inputs (token ids, positions, cache slots, context lengths, block tables)
live in one int32 device buffer, filled from a pinned host buffer by a single asynchronous copy: the
host never waits for the GPU to prepare a step. Padded rows write their K/V nowhere (slot -1) and
attend to one cached token of whatever block their table row names; their logits are dropped.
"""
from __future__ import annotations

import numpy as np
import torch

from engines.portable.attention import AttentionMetadata, GpuAttentionMetadata
from engines.portable.model import CausalLM

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


class DecodeGraphs:
    def __init__(self, model: CausalLM, kv_caches: list, max_batch: int, max_blocks: int, block_size: int,
                 max_context_len: int):
        from engines.portable import kernels

        self.model, self.kv_caches, self.block_size = model, kv_caches, block_size
        self.max_context_len, self.max_blocks = max_context_len, max_blocks
        device = kv_caches[0][0].device
        self.buckets = [b for b in BUCKETS if b <= max_batch] or [max_batch]
        self.largest = largest = self.buckets[-1]
        # layout: ids | positions | slots | context lengths (each `largest` long) | tables [largest, max_blocks]
        size = largest * (4 + max_blocks)
        self.inputs = torch.zeros(size, dtype=torch.int32, device=device)
        self.staging = torch.zeros(size, dtype=torch.int32).pin_memory()
        self.host = self.staging.numpy()
        self.host[2 * largest:3 * largest] = -1
        self.host[3 * largest:4 * largest] = 1
        self.inputs.copy_(self.staging)
        self.input_ids, self.positions, self.slots, self.context_lens = self.inputs[:4 * largest].view(4, largest)
        self.block_tables = self.inputs[4 * largest:].view(largest, max_blocks)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
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
        hidden = self.model.forward(self.input_ids[:batch], self.positions[:batch], meta, self.kv_caches)
        return self.model.logits(hidden)

    def fits(self, batch: int, max_blocks: int) -> bool:
        return batch <= self.largest and max_blocks <= self.max_blocks

    def run(self, input_ids: list[int], positions: list[int], slots: list[int], block_tables: list[list[int]]
            ) -> torch.Tensor:
        """Logits [B, vocab] of one decode step for B sequences, from host-side lists.

        The pinned buffer is rewritten only after the previous step's results were read back, which
        waited for this copy, so reusing it is safe."""
        batch, largest, host = len(input_ids), self.largest, self.host
        bucket = next(b for b in self.buckets if b >= batch)
        host[:batch] = input_ids
        host[largest:largest + batch] = positions
        host[2 * largest:2 * largest + batch] = slots
        host[2 * largest + batch:2 * largest + bucket] = -1
        context = np.asarray(positions, dtype=np.int32) + 1
        host[3 * largest:3 * largest + batch] = context
        host[3 * largest + batch:3 * largest + bucket] = 1
        tables = host[4 * largest:].reshape(largest, self.max_blocks)
        for row, table in enumerate(block_tables):
            tables[row, :len(table)] = table
        # entries past a row's context are never read, and padded rows read column 0, always a valid id
        used = 4 * largest + bucket * self.max_blocks
        self.inputs[:used].copy_(self.staging[:used], non_blocking=True)
        self.graphs[bucket].replay()
        return self.logits[bucket][:batch]
