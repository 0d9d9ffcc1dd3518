"""Beam search scoring for one request, as transformers' `generate(num_beams=k)` does it.

Each step takes the log-probabilities of every live beam, keeps the 2k best continuations by cumulative
log-probability, continues the best k that did not hit a stopping condition, and records those of the
first k that did as finished hypotheses scored `sum / generated_length ** length_penalty` (k slots,
the best kept). The search ends when every candidate stops, when `early_stopping` is set and k
hypotheses are finished, or when no running beam can beat the worst finished one any more (scored at
its current length: transformers' default heuristic). The engine owns the sequences and their KV
blocks; this module only decides.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

DEAD = -1.0e9  # transformers' score for an empty slot


@dataclass
class Hypothesis:
    score: float  # length-normalised
    cum_logprob: float
    token_ids: list[int]  # the output, without the end id
    logprobs: list[float]
    finish_reason: str


@dataclass
class Candidate:
    parent: int  # row of the live beam it continues
    token: int
    cum_logprob: float
    stops: str | None  # "stop" or "length" when this token ends the beam


@dataclass
class BeamSearch:
    width: int
    length_penalty: float
    early_stopping: bool
    finished: list[Hypothesis] = field(default_factory=list)  # at most `width`, best first
    improvable: bool = True
    done: bool = False
    accepting: bool = True  # whether this step's stopping candidates may still become hypotheses

    def step(self, log_probs: torch.Tensor, cum_logprobs: list[float], stopping) -> list[Candidate]:
        """The step's 2k best continuations of the live beams' rows of `log_probs` [beams, vocab], best
        first; `stopping(parent, token)` says how a continuation would end ("stop", "length") or None.
        Offer the stopping ones in rank order, then continue `running(candidates)`."""
        beams, vocab = log_probs.shape
        self.accepting = self.improvable and not (self.early_stopping and self.full)
        scores = log_probs.double() + torch.tensor(cum_logprobs, dtype=torch.float64)[:, None]
        top_scores, top_index = scores.reshape(-1).topk(min(2 * self.width, beams * vocab))
        candidates = [Candidate(int(i) // vocab, int(i) % vocab, float(s), None)
                      for s, i in zip(top_scores.tolist(), top_index.tolist(), strict=True)]
        for candidate in candidates:
            candidate.stops = stopping(candidate.parent, candidate.token)
        return candidates

    def running(self, candidates: list[Candidate]) -> list[Candidate]:
        """The beams to continue: the best `width` that do not stop."""
        return [c for c in candidates if c.stops is None][: self.width]

    def offer(self, candidate: Candidate, rank: int, generated: int, hypothesis: Hypothesis) -> None:
        """A continuation that stops, ranked `rank` among this step's candidates, with `generated`
        output tokens counting the one that ends it."""
        if rank >= self.width or not self.accepting:
            return
        hypothesis.score = candidate.cum_logprob / (generated ** self.length_penalty)
        self.finished.append(hypothesis)
        self.finished.sort(key=lambda h: h.score, reverse=True)
        del self.finished[self.width:]

    @property
    def full(self) -> bool:
        return len(self.finished) >= self.width

    def after_step(self, best_running_cum: float | None, generated: int) -> None:
        """Update the stopping heuristic once the step's beams are chosen; `generated` counts their
        output tokens."""
        if best_running_cum is None:
            self.done = True
            return
        worst = self.finished[-1].score if self.full else DEAD
        self.improvable = self.improvable and best_running_cum / (generated ** self.length_penalty) > worst
        if not self.improvable or (self.early_stopping and self.full):
            self.done = True

    def best(self, n: int) -> list[Hypothesis]:
        return self.finished[:n]
