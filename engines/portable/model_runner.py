"""Turns a scheduled step into tensors, runs the model, and returns the logits that will be sampled."""
from __future__ import annotations

from typing import Callable

import torch

from engines.portable.attention import AttentionMetadata, GpuAttentionMetadata
from engines.portable.config import EngineConfig
from engines.portable.cpu_threads import step_threads
from engines.portable.cuda_graphs import DecodeGraphs, Launch
from engines.portable.model import CausalLM
from engines.portable.sequence import Sequence


class ModelRunner:
    def __init__(self, model: CausalLM, engine_config: EngineConfig, num_blocks: int, dtype: torch.dtype):
        cfg = model.config
        self.model, self.config = model, engine_config
        self.device = torch.device(engine_config.device)
        shape = (num_blocks, engine_config.block_size, cfg.num_kv_heads, cfg.head_dim)
        self.kv_caches = [(torch.zeros(shape, dtype=dtype, device=self.device),
                           torch.zeros(shape, dtype=dtype, device=self.device)) for _ in range(cfg.num_layers)]
        self.use_kernels = self.device.type == "cuda" and _kernels_available()
        self.graphs = None
        if self.use_kernels and engine_config.cuda_graphs:
            max_len = engine_config.max_model_len or cfg.max_position_embeddings
            max_blocks = -(-max_len // engine_config.block_size)
            self.graphs = DecodeGraphs(model, self.kv_caches, engine_config.max_num_seqs, max_blocks,
                                       engine_config.block_size, max_len)

    def _prepare(self, scheduled: list[tuple[Sequence, int]]):
        block_size = self.config.block_size
        input_ids, positions, slots, token_seq, token_pos = [], [], [], [], []
        for index, (seq, count) in enumerate(scheduled):
            start = seq.num_computed_tokens
            span = range(start, start + count)
            input_ids.extend(seq.token_ids[start:start + count])
            positions.extend(span)
            slots.extend(seq.block_table[p // block_size] * block_size + p % block_size for p in span)
            token_seq.extend([index] * count)
            token_pos.extend(range(count))
        max_blocks = max(len(seq.block_table) for seq, _ in scheduled)
        tables = [seq.block_table + [0] * (max_blocks - len(seq.block_table)) for seq, _ in scheduled]
        context_lens = [seq.num_computed_tokens + count for seq, count in scheduled]
        query_lens = [count for _, count in scheduled]

        def tensor(values):
            return torch.tensor(values, dtype=torch.long, device=self.device)

        gpu = None
        if self.use_kernels:
            decode_only = max(query_lens) == 1
            cu = None if decode_only else torch.tensor([0] + query_lens, device=self.device).cumsum(0).int()
            gpu = GpuAttentionMetadata(tensor(tables).int(), tensor(context_lens).int(), cu)
        meta = AttentionMetadata(
            slot_mapping=tensor(slots), block_tables=tensor(tables), context_lens=tensor(context_lens),
            query_lens=tensor(query_lens), token_seq=tensor(token_seq), token_pos_in_query=tensor(token_pos),
            max_query_len=max(query_lens), max_context_len=max(context_lens), block_size=block_size,
            sliding_window=self.model.config.sliding_window, gpu=gpu,
        )
        last_token = torch.tensor(query_lens).cumsum(0) - 1
        lora = None
        if self.model.lora is not None:
            lora = tensor([seq.lora_slot for seq, count in scheduled for _ in range(count)])
        return tensor(input_ids), tensor(positions), meta, last_token.to(self.device), lora

    def graph_decode(self, scheduled: list[tuple[Sequence, int]], sample_rows: list[int]) -> bool:
        """Whether the step is one token per sequence, all sampled, and fits a captured graph."""
        return (len(sample_rows) == len(scheduled) and all(count == 1 for _, count in scheduled)
                and self.can_launch([seq for seq, _ in scheduled]))

    def can_launch(self, seqs: list[Sequence]) -> bool:
        """Whether a decode step of `seqs` fits a captured graph."""
        return self.graphs is not None and self.graphs.fits(len(seqs), max(len(seq.block_table) for seq in seqs))

    def launch_decode(self, seqs: list[Sequence], source_rows: list[int] | None = None,
                      finish: bool = True) -> Launch:
        """Starts a graph decode step at each sequence's next position; returns without waiting.

        Input tokens come from the sequences, or for rows with `source_rows[i] >= 0` from that row of
        the previous launch's greedy choice, still on the device. Without `finish`, the caller calls
        `finish` (with the grammar rows' mask) before reading the launch or launching again."""
        block_size = self.config.block_size
        positions = [seq.num_computed_tokens for seq in seqs]
        slots = [seq.block_table[p // block_size] * block_size + p % block_size
                 for seq, p in zip(seqs, positions, strict=True)]
        if source_rows is None:
            input_ids = [seq.token_ids[p] for seq, p in zip(seqs, positions, strict=True)]
        else:
            input_ids = [0] * len(seqs)  # every row reads the device
        return self.graphs.launch(input_ids, positions, slots, [seq.block_table for seq in seqs], source_rows,
                                  None if self.model.lora is None else [seq.lora_slot for seq in seqs], finish)

    def finish(self, launch: Launch, rows: list[int] | None = None,
               choose: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Queue a launch's choices back to the host; `rows` (with `choose` over their logits) first."""
        self.graphs.finish(launch, rows, choose)

    def grammar_bitmask(self, launch: Launch) -> torch.Tensor | None:
        """Where to fill the bitmask of `launch`'s grammar rows: pinned memory the device copies from."""
        return self.graphs.host_bitmask(launch, self.model.config.vocab_size)

    def greedy(self, launch: Launch) -> tuple[list[int], list[float]]:
        return self.graphs.greedy(launch)

    def run(self, scheduled: list[tuple[Sequence, int]], sample_rows: list[int]) -> torch.Tensor:
        """Logits [len(sample_rows), vocab] at the last new token of the scheduled entries listed."""
        return self.run_with_context(scheduled, sample_rows, [])[0]

    def run_with_context(self, scheduled: list[tuple[Sequence, int]], sample_rows: list[int],
                         context_rows: list[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """As `run`, and for the scheduled entries in `context_rows` the logits at every new token
        (float32 on the CPU): the prompt's own logits, which prompt logprobs are computed from."""
        if not context_rows and self.graph_decode(scheduled, sample_rows):
            return self.graphs.logits_of(self.launch_decode([seq for seq, _ in scheduled])), {}
        input_ids, positions, meta, last_token, lora_slots = self._prepare(scheduled)
        with self.step_threads(scheduled):
            hidden = self.model.forward(input_ids, positions, meta, self.kv_caches, lora_slots)
            rows = last_token[torch.tensor(sample_rows, dtype=torch.long, device=self.device)]
            context = {}
            for index in context_rows:
                count = scheduled[index][1]
                end = int(last_token[index]) + 1
                context[index] = self.model.logits(hidden[end - count:end]).float().cpu()
            return self.model.logits(hidden[rows]), context

    def step_threads(self, scheduled: list[tuple[Sequence, int]]):
        """The intra-op threads of a step on the CPU: fewer for small steps (engines/portable/cpu_threads.py)."""
        threads = self.config.cpu_small_step_threads if self.device.type == "cpu" else 0
        return step_threads(sum(count for _, count in scheduled), self.config.cpu_int8_max_rows, threads)

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy whole KV blocks (source, destination) in every layer: a forked sequence's partial block."""
        if not pairs:
            return
        source = torch.tensor([s for s, _ in pairs], device=self.device)
        destination = torch.tensor([d for _, d in pairs], device=self.device)
        for key_cache, value_cache in self.kv_caches:
            key_cache[destination] = key_cache[source]
            value_cache[destination] = value_cache[source]


def _kernels_available() -> bool:
    from engines.portable import kernels

    return kernels.available()
