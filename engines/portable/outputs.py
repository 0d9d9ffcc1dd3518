"""What the engine hands back: each step's new tokens per request and choice, and whole results."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepOutput:
    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[float] | None
    finished: bool  # the whole request: every choice has ended
    finish_reason: str | None = None  # of this choice: "stop", "length" or "abort"; set once it ends
    index: int = 0  # the choice (or beam, best first) these tokens belong to
    cum_logprob: float | None = None  # of the choice so far (beams: under the searched distribution)
    new_logits: torch.Tensor | None = None  # raw logits rows [tokens, vocab] when generation logits are asked
    context_logits: torch.Tensor | None = None  # the prompt's rows [prompt_len, vocab], with the first output


@dataclass
class Choice:
    index: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    cum_logprob: float | None = None
    finish_reason: str | None = None
    logits: list[torch.Tensor] = field(default_factory=list)  # raw rows, when generation logits are asked


@dataclass
class RequestOutput:
    """A whole request's result, gathered from its step outputs (offline use and tests)."""

    request_id: str
    choices: list[Choice] = field(default_factory=list)
    context_logits: torch.Tensor | None = None

    def add(self, output: StepOutput) -> None:
        while len(self.choices) <= output.index:
            self.choices.append(Choice(len(self.choices)))
        choice = self.choices[output.index]
        choice.token_ids += output.new_token_ids
        choice.logprobs += output.new_logprobs or []
        choice.cum_logprob = output.cum_logprob
        choice.finish_reason = output.finish_reason or choice.finish_reason
        if output.new_logits is not None:
            choice.logits.append(output.new_logits)
        if output.context_logits is not None:
            self.context_logits = output.context_logits
