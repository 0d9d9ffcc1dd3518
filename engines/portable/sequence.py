"""A request inside the engine: its tokens, its KV blocks, and how far its KV cache is computed."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from engines.portable.grammar import GrammarState
from engines.portable.sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    status: Status = Status.WAITING
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # hashes of the leading full blocks
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    logprobs: list[float] = field(default_factory=list)
    generator: torch.Generator | None = None
    finish_reason: str | None = None
    grammar: GrammarState | None = None  # constrained decoding: where the request is in its grammar
    index: int = 0  # which choice (or beam) of its request
    cum_logprob: float = 0.0  # of the output under the raw distribution; beams: under the searched one
    generation_logits: list[torch.Tensor] = field(default_factory=list)  # one raw row per sampled token, not sent yet
    lora: object | None = None  # engines.portable.lora.LoraAdapter, or None for the base model
    lora_slot: int = -1  # its device slot during a step (-1: the base)

    def fork(self, index: int) -> "Sequence":
        """A new choice continuing from this one's tokens; the caller gives it KV blocks and a generator."""
        return Sequence(self.request_id, list(self.token_ids), self.num_prompt_tokens, self.params,
                        status=self.status, logprobs=list(self.logprobs), index=index, cum_logprob=self.cum_logprob,
                        lora=self.lora)

    @property
    def cache_salt(self) -> bytes | None:
        """Seeds the prefix-cache hashes, so KV made under one adapter serves only that adapter."""
        return None if self.lora is None else self.lora.cache_salt

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    def reset_cache_state(self) -> None:
        """After preemption: the KV cache is gone and everything is recomputed later."""
        self.block_table, self.block_hashes, self.num_computed_tokens = [], [], 0
