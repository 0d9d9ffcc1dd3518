"""CUDA graphs for decode steps: one graph per batch-size bucket, replayed with fresh inputs.

A decode step is the same sequence of kernels every time, so it is captured once per bucket and
replayed; the step's inputs are copied into static buffers first. Padded rows write their K/V
nowhere (slot -1) and attend to one cached token of block 0; their logits are dropped.
"""
from __future__ import annotations

import torch

from engines.portable.attention import AttentionMetadata, GpuAttentionMetadata
from engines.portable.model import CausalLM

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


class DecodeGraphs:
    def __init__(self, model: CausalLM, kv_caches: list, max_batch: int, max_blocks: int, block_size: int,
                 max_context_len: int):
        from engines.portable import kernels

        self.model, self.kv_caches, self.block_size = model, kv_caches, block_size
        self.max_context_len = max_context_len
        device = kv_caches[0][0].device
        self.buckets = [b for b in BUCKETS if b <= max_batch] or [max_batch]
        largest = self.buckets[-1]
        self.input_ids = torch.zeros(largest, dtype=torch.long, device=device)
        self.positions = torch.zeros(largest, dtype=torch.long, device=device)
        self.slots = torch.full((largest,), -1, dtype=torch.long, device=device)
        self.block_tables = torch.zeros(largest, max_blocks, dtype=torch.int32, device=device)
        self.context_lens = torch.ones(largest, dtype=torch.int32, device=device)
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
        return batch <= self.buckets[-1] and max_blocks <= self.block_tables.shape[1]

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
            block_tables: torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor:
        """Logits [B, vocab] of one decode step for B sequences (inputs already on the device)."""
        batch = input_ids.shape[0]
        bucket = next(b for b in self.buckets if b >= batch)
        self.input_ids[:batch].copy_(input_ids)
        self.positions[:batch].copy_(positions)
        self.slots[:bucket].fill_(-1)
        self.slots[:batch].copy_(slots)
        self.block_tables[:bucket].zero_()
        self.block_tables[:batch, : block_tables.shape[1]].copy_(block_tables)
        self.context_lens[:bucket].fill_(1)
        self.context_lens[:batch].copy_(context_lens)
        self.graphs[bucket].replay()
        return self.logits[bucket][:batch]
