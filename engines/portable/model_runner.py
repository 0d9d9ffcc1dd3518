"""Turns a scheduled step into tensors, runs the model, and returns the logits that will be sampled."""
from __future__ import annotations

import torch

from engines.portable.attention import AttentionMetadata
from engines.portable.config import EngineConfig, ModelConfig
from engines.portable.model import CausalLM
from engines.portable.sequence import Sequence


def kv_cache_blocks(model: ModelConfig, engine: EngineConfig, dtype: torch.dtype) -> int:
    if engine.num_kv_blocks is not None:
        return engine.num_kv_blocks
    element = torch.tensor([], dtype=dtype).element_size()
    per_block = 2 * model.num_layers * engine.block_size * model.num_kv_heads * model.head_dim * element
    return max(1, engine.kv_cache_memory_bytes // per_block)


class ModelRunner:
    def __init__(self, model: CausalLM, engine_config: EngineConfig, num_blocks: int, dtype: torch.dtype):
        cfg = model.config
        self.model, self.config = model, engine_config
        self.device = torch.device(engine_config.device)
        shape = (num_blocks, engine_config.block_size, cfg.num_kv_heads, cfg.head_dim)
        self.kv_caches = [(torch.zeros(shape, dtype=dtype, device=self.device),
                           torch.zeros(shape, dtype=dtype, device=self.device)) for _ in range(cfg.num_layers)]

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

        meta = AttentionMetadata(
            slot_mapping=tensor(slots), block_tables=tensor(tables), context_lens=tensor(context_lens),
            query_lens=tensor(query_lens), token_seq=tensor(token_seq), token_pos_in_query=tensor(token_pos),
            max_query_len=max(query_lens), max_context_len=max(context_lens), block_size=block_size,
            sliding_window=self.model.config.sliding_window,
        )
        last_token = torch.tensor(query_lens).cumsum(0) - 1
        return tensor(input_ids), tensor(positions), meta, last_token.to(self.device)

    def run(self, scheduled: list[tuple[Sequence, int]], sample_rows: list[int]) -> torch.Tensor:
        """Logits [len(sample_rows), vocab] at the last new token of the scheduled entries listed."""
        input_ids, positions, meta, last_token = self._prepare(scheduled)
        hidden = self.model.forward(input_ids, positions, meta, self.kv_caches)
        rows = last_token[torch.tensor(sample_rows, dtype=torch.long, device=self.device)]
        return self.model.logits(hidden[rows])
