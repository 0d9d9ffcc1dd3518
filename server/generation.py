"""One completion choice from prompt ids to text deltas: engine tokens, detokenized, stop strings applied.

Chat and text completions share this; they differ only in how they build the prompt and shape output.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from engines import contract
from server.detokenizer import IncrementalDetokenizer
from server.stops import StopMatcher
from server.tokenizer import Tokenizer
from server.triton_client import TritonEngineClient


@dataclass
class Delta:
    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    finish_reason: str | None = None
    chunk: contract.GenerationChunk | None = None  # the engine's response: logits rows, beams, cum_log_prob


@dataclass
class GenerationPlan:
    """What the route decided: the engine request plus the gateway-side parts (stops, detokenizing)."""

    request: contract.GenerationRequest
    stop_strings: list[str]
    skip_special_tokens: bool = True

    @property
    def max_tokens(self) -> int:
        return self.request.request_output_len


async def generate(engine: TritonEngineClient, tokenizer: Tokenizer, plan: GenerationPlan,
                   request_id: str = "", deadline: float | None = None) -> AsyncIterator[Delta]:
    """Deltas of text; the last one carries finish_reason ("stop" or "length")."""
    detokenizer = IncrementalDetokenizer(tokenizer.raw, plan.skip_special_tokens)
    stops = StopMatcher(plan.stop_strings)
    generated = 0
    # aclosing: leaving this generator early closes the engine stream at once, which cancels the request.
    async with aclosing(engine.generate(plan.request, request_id, deadline)) as chunks:
        async for chunk in chunks:
            generated += len(chunk.output_ids)
            text = detokenizer.add(chunk.output_ids)
            if chunk.final:
                text += detokenizer.flush()
            emitted = stops.feed(text)
            if stops.stopped:
                yield Delta(emitted, chunk.output_ids, chunk.log_probs, "stop", chunk)
                return  # leaving the stream cancels the rest of the generation in the engine
            if chunk.final:
                reason = "length" if generated >= plan.max_tokens else "stop"
                yield Delta(emitted + stops.flush(), chunk.output_ids, chunk.log_probs, reason, chunk)
                return
            if emitted or chunk.output_ids:
                yield Delta(emitted, chunk.output_ids, chunk.log_probs, chunk=chunk)
