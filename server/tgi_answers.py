"""TGI's answers from our engine's: generated text with `details` (tokens, `top_tokens`, the prompt's
`prefill` tokens, `best_of_sequences`), and the stream's token events.

As TGI's router does, `best_of` keeps the sequence with the highest mean logprob per generated token; the
others go to `details.best_of_sequences`. Logprobs and top tokens are the model's raw distribution, before
temperature and penalties (server/logprobs.py), which is also what the chosen tokens' logprobs are here.
"""
from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable

import numpy as np

from server import logprobs
from server.choices import Collected, collect
from server.errors import APIError
from server.protocols.tgi import BestOfSequence, Details, PrefillToken, StreamDetails, Token, dump_tgi
from server.tgi import TgiGeneration, finish_reason
from server.tokenizer import Tokenizer


def token(tokenizer: Tokenizer, token_id: int, logprob: float | None, text: str | None = None) -> Token:
    return Token(id=token_id, text=tokenizer.token_text(token_id) if text is None else text, logprob=logprob,
                 special=token_id in tokenizer.special_ids)


def top_tokens(tokenizer: Tokenizer, scored: list[logprobs.Scored]) -> list[list[Token]]:
    """Each position's most likely tokens, most likely first."""
    return [[token(tokenizer, token_id, logprob) for token_id, logprob in item.top] for item in scored]


def prefill(tokenizer: Tokenizer, prompt_ids: list[int], context: np.ndarray | None) -> list[PrefillToken]:
    """The prompt's tokens, each with its logprob given the ones before it (the first has none: null)."""
    if context is None:
        raise APIError(500, "The engine returned no prompt logits for decoder_input_details.", "server_error",
                       code="engine_error")
    return [PrefillToken(id=item.token_id, text=tokenizer.token_text(item.token_id), logprob=item.logprob)
            for item in logprobs.prompt(prompt_ids, context, 0)]


def mean_logprob(answer: Collected) -> float:
    """TGI's best_of rank: the mean logprob of the generated tokens."""
    return sum(answer.logprobs) / len(answer.logprobs) if answer.logprobs else -math.inf


async def gathered(works: list[Awaitable]) -> list:
    """All results; the first failure cancels the rest, so no engine request outlives the answer."""
    tasks = [asyncio.ensure_future(work) for work in works]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


def sequence(generation: TgiGeneration, answer: Collected, index: int, prompt: list[PrefillToken],
             tokenizer: Tokenizer) -> BestOfSequence:
    scored = logprobs.generated(answer.token_ids, answer.logprobs, answer.logits_rows, generation.top_n_tokens)
    text = generation.inputs + answer.text if generation.return_full_text else answer.text
    last = answer.token_ids[-1] if answer.token_ids else None
    return BestOfSequence(
        generated_text=text, finish_reason=finish_reason(answer.finish_reason, last, tokenizer),
        generated_tokens=generation.runs[index].completion_tokens, seed=generation.seeds[index], prefill=prompt,
        tokens=[token(tokenizer, item.token_id, item.logprob) for item in scored],
        top_tokens=top_tokens(tokenizer, scored) if generation.top_n_tokens else None)


async def complete(generation: TgiGeneration, details: bool, tokenizer: Tokenizer) -> dict:
    """The answer of /generate: the best sequence's text, and its details when asked."""
    answers: list[Collected] = await gathered([collect(run) for run in generation.runs])
    prompt = prefill(tokenizer, generation.prompt_ids, answers[0].context_logits) if generation.prefill else []
    sequences = [sequence(generation, answer, index, prompt, tokenizer) for index, answer in enumerate(answers)]
    best = max(range(len(answers)), key=lambda index: mean_logprob(answers[index]))  # the first of equals
    chosen = sequences.pop(best)
    out: dict = {"generated_text": chosen.generated_text}
    if details:
        fields = chosen.model_dump(exclude={"generated_text"})
        out["details"] = dump_tgi(Details(**fields, best_of_sequences=sequences if sequences else None))
    return out


def stream_details(generation: TgiGeneration, reason: str, last: int | None, tokenizer: Tokenizer) -> StreamDetails:
    return StreamDetails(finish_reason=finish_reason(reason, last, tokenizer),
                         generated_tokens=generation.run.completion_tokens, seed=generation.seeds[0],
                         input_length=len(generation.prompt_ids))


def stream_top_tokens(generation: TgiGeneration, delta, tokenizer: Tokenizer) -> list[list[Token]] | None:
    """Each of a delta's tokens' top tokens, when the request asked for them."""
    if not generation.top_n_tokens:
        return None
    rows = delta.chunk.generation_logits if delta.chunk is not None else None
    scored = logprobs.generated(delta.token_ids, delta.logprobs, rows, generation.top_n_tokens)
    return top_tokens(tokenizer, scored)
