"""A request's sequences: its choices (n, best_of) or its beams, forked from one prefill.

The request starts as one sequence. When its prompt is computed, it forks into the choices it asks
for: each new sequence shares the prompt's full KV blocks and gets a copy of the partly filled last
one, and a generator seeded for its index (`contract.choice_seed`), so a seeded request gives the same
choices however the batch around it looks. Beams fork and die at every step as the search decides.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engines.contract import choice_seed
from engines.portable.beam_search import BeamSearch
from engines.portable.sampling import SamplingParams
from engines.portable.sequence import Sequence


@dataclass(eq=False)
class RequestGroup:
    request_id: str
    params: SamplingParams
    live: list[Sequence]
    done: list[Sequence] = field(default_factory=list)  # finished choices, kept when the request buffers
    beam: BeamSearch | None = None
    pending: dict[int, torch.Tensor] = field(default_factory=dict)  # id(beam) -> its log-prob row this step
    forked: bool = False
    context_logits: list[torch.Tensor] = field(default_factory=list)  # prompt rows (CPU), chunk by chunk
    num_context_logits: int = 0  # prompt positions whose rows are kept: a recomputation skips them
    context_sent: bool = False

    @classmethod
    def start(cls, request_id: str, prompt: list[int], params: SamplingParams, device: str) -> "RequestGroup":
        seq = Sequence(request_id, prompt, len(prompt), params)
        seq.generator = make_generator(params, 0, device)
        beam = None
        if params.beam_search:
            beam = BeamSearch(params.beam_width, params.length_penalty, params.early_stopping)
        return cls(request_id, params, [seq], beam=beam)

    @property
    def buffered(self) -> bool:
        """Whether outputs wait for the end: beams change until the search ends, and best_of keeps
        only the best n of its choices."""
        return self.beam is not None or self.params.num_sequences > self.params.n

    @property
    def wants_fork(self) -> bool:
        return not self.forked and self.beam is None and self.params.num_sequences > 1

    def take_context(self) -> torch.Tensor | None:
        """The prompt's logits rows [prompt_len, vocab], once, with the request's first output."""
        if self.context_sent or not self.params.return_context_logits:
            return None
        self.context_sent = True
        return torch.cat(self.context_logits) if self.context_logits else None

    def keep_context(self, start: int, count: int, rows: torch.Tensor, num_prompt_tokens: int) -> None:
        """Rows of a computed chunk [start, start + count) that fall in the prompt and are new."""
        first, last = max(start, self.num_context_logits), min(start + count, num_prompt_tokens)
        if first < last:
            self.context_logits.append(rows[first - start:last - start])
            self.num_context_logits = last

    def chosen(self) -> list[Sequence]:
        """The choices returned when the request buffers: the best `n` by cumulative logprob."""
        return sorted(self.done, key=lambda seq: seq.cum_logprob, reverse=True)[: self.params.n]


def make_generator(params: SamplingParams, index: int, device: str) -> torch.Generator | None:
    if params.seed is None or params.greedy:
        return None
    seed = choice_seed(int(params.seed) & 0xFFFF_FFFF_FFFF_FFFF, index)  # the contract's seed is a uint64
    return torch.Generator(device=device).manual_seed(seed)
