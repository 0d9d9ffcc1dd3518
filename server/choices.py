"""n, best_of and beam search in the gateway, one code path for both engines.

The `tensorrt_llm` model of tensorrtllm_backend 0.12 (the TensorRT-LLM release our trtllm target builds)
has no `num_return_sequences` input nor `sequence_index` output (both came with 0.14), so several
choices are several engine requests: choice i is seeded with `contract.choice_seed(seed, i)`, and a
request without a seed gets a random one first, since TensorRT-LLM seeds every request alike by default
and the choices would all be equal. The portable engine gives a forked choice the same seed, so its
offline n and this fan-out agree token for token. `best_of` samples best_of choices and keeps the n
with the highest cumulative logprob (vLLM's rule).

Beam search is the contract's `beam_width` (with `len_penalty`, `early_stopping`): one engine request,
not streamed, whose final response carries the beams, best first; the first n are the choices. It
takes the most likely continuations, so temperature, top_p and top_k do not apply.
"""
from __future__ import annotations

import asyncio
from contextlib import aclosing
import copy
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from engines import contract
from server.errors import bad_request
from server.generation import Delta, GenerationPlan
from server.protocol import SamplingFields
from server.stops import StopMatcher


@dataclass(frozen=True)
class Choices:
    n: int  # returned
    runs: int  # engine requests (best_of when sampling), or beams
    beam_width: int = 1

    @property
    def beam_search(self) -> bool:
        return self.beam_width > 1


def choices_of(fields: SamplingFields, best_of: int | None, stream: bool) -> Choices:
    """What the request asks for, checked: n, best_of, and beam search (use_beam_search or num_beams)."""
    n = fields.n
    if best_of is not None and best_of < n:
        raise bad_request(f"best_of ({best_of}) must be at least n ({n}).", "best_of")
    if fields.use_beam_search or (fields.num_beams or 1) > 1:
        width = max(fields.num_beams or 1, best_of or 1, n)
        if fields.num_beams is not None and fields.num_beams < n:
            raise bad_request(f"num_beams ({fields.num_beams}) must be at least n ({n}).", "num_beams")
        if width < 2 and fields.use_beam_search:
            raise bad_request("use_beam_search needs at least two beams: set best_of, n or num_beams above 1.",
                              "use_beam_search")
        if stream:
            raise bad_request("Beam search cannot be streamed: the beams change until the search ends.", "stream")
        return Choices(n, 1, max(width, 2))
    runs = best_of or n
    if stream and runs > n:
        raise bad_request("best_of above n cannot be streamed: the best choices are known only at the end.",
                          "best_of")
    return Choices(n, runs)


def plans_for(plan: GenerationPlan, choices: Choices, fields: SamplingFields) -> list[GenerationPlan]:
    """The engine requests of one prompt."""
    if choices.beam_search:
        request = copy.copy(plan.request)
        request.beam_width, request.streaming = choices.beam_width, False
        request.len_penalty, request.early_stopping = fields.length_penalty, fields.early_stopping
        request.temperature, request.top_k, request.top_p = 1.0, 0, 1.0
        return [GenerationPlan(request, plan.stop_strings, plan.skip_special_tokens)]
    if choices.runs == 1:
        return [plan]
    seed = plan.request.random_seed
    if seed is None:
        seed = secrets.randbits(64)
    plans = []
    for index in range(choices.runs):
        request = copy.copy(plan.request)
        request.random_seed = contract.choice_seed(seed, index)
        if choices.runs > choices.n:
            request.return_log_probs = True  # best_of ranks by cumulative logprob
        plans.append(GenerationPlan(request, plan.stop_strings, plan.skip_special_tokens))
    return plans


def best_indices(cumulative: list[float], n: int) -> list[int]:
    """The n runs with the highest cumulative logprob, best first."""
    return sorted(range(len(cumulative)), key=lambda index: cumulative[index], reverse=True)[:n]


async def merged(streams: list[AsyncIterator[Delta]]) -> AsyncIterator[tuple[int, Delta]]:
    """Deltas of several choices as they come, each with its choice index; the first error ends all."""
    if len(streams) == 1:  # one choice, the usual case: no task and no queue hop per token
        async with aclosing(streams[0]) as stream:
            async for delta in stream:
                yield 0, delta
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(index: int, stream: AsyncIterator[Delta]) -> None:
        try:
            async for delta in stream:
                await queue.put((index, delta))
            await queue.put((index, done))
        except BaseException as exc:  # handed to the consumer, which raises it
            await queue.put((index, exc))

    tasks = [asyncio.ensure_future(pump(index, stream)) for index, stream in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            index, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Collected:
    """One engine request's whole answer, for a response that is not streamed."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)  # generation logits, one row per token
    context_logits: np.ndarray | None = None
    finish_reason: str | None = None
    cum_log_prob: float | None = None
    beams: list[contract.GenerationChunk] = field(default_factory=list)

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        self.token_ids += delta.token_ids
        self.logprobs += delta.logprobs or []
        self.finish_reason = delta.finish_reason or self.finish_reason
        chunk = delta.chunk
        if chunk is None:
            return
        if chunk.generation_logits is not None:
            self.rows.append(chunk.generation_logits)
        if chunk.context_logits is not None:
            self.context_logits = chunk.context_logits
        if chunk.cum_log_prob is not None:
            self.cum_log_prob = chunk.cum_log_prob
        self.beams = chunk.beams or self.beams

    @property
    def logits_rows(self) -> np.ndarray | None:
        return np.concatenate(self.rows) if self.rows else None

    @property
    def score(self) -> float:
        return self.cum_log_prob if self.cum_log_prob is not None else sum(self.logprobs)


async def collect(run) -> Collected:
    """Start a GenerationRun and gather its deltas."""
    await run.start()
    collected = Collected()
    async for delta in run.deltas():
        collected.add(delta)
    return collected


def beam_answers(collected: Collected, plan: GenerationPlan, tokenizer, n: int) -> list[Collected]:
    """The first n beams of a beam search's answer as choices, each decoded and cut at a stop string."""
    first = contract.GenerationChunk(collected.token_ids, collected.logprobs or None, True,
                                     cum_log_prob=collected.cum_log_prob)
    answers = []
    for beam in [first, *collected.beams][:n]:
        text = tokenizer.decode(beam.output_ids, skip_special_tokens=plan.skip_special_tokens)
        stops = StopMatcher(plan.stop_strings)
        emitted = stops.feed(text)
        reason = "stop" if stops.stopped or len(beam.output_ids) < plan.max_tokens else "length"
        answers.append(Collected(emitted if stops.stopped else emitted + stops.flush(), list(beam.output_ids),
                                 list(beam.log_probs or []), finish_reason=reason,
                                 cum_log_prob=beam.cum_log_prob))
    return answers


def chosen(collected: list[Collected], choices: Choices, plan: GenerationPlan, tokenizer) -> list[Collected]:
    """The answers returned for one prompt: its beams, its best n of best_of, or its n choices."""
    if choices.beam_search:
        return beam_answers(collected[0], plan, tokenizer, choices.n)
    if choices.runs > choices.n:
        return [collected[index] for index in best_indices([c.score for c in collected], choices.n)]
    return collected
