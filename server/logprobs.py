"""OpenAI logprobs from what the engine returns: each token's logprob, and (from the raw logits rows
of the contract's `generation_logits` / `context_logits`) the most likely alternatives and the
prompt's own logprobs for `echo`.

The numbers are the model's raw distribution, before temperature, penalties, logit_bias, top-k or
top-p (vLLM's default), so a token sampled at a high temperature shows what the model thought of it.
Completions' `top_logprobs` hold the `logprobs` most likely tokens plus the chosen one (as vLLM
does); chat's hold exactly `top_logprobs` alternatives, each with its own bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engines.logprobs import token_logprobs, top_logprobs
from server.protocol import ChoiceLogprobs, CompletionLogprobs, TokenLogprob


@dataclass
class Scored:
    token_id: int
    logprob: float | None  # None for the prompt's first token
    top: list[tuple[int, float]] = field(default_factory=list)


def generated(token_ids: list[int], logprobs: list[float] | None, rows: np.ndarray | None, k: int) -> list[Scored]:
    """The new tokens with their logprobs and, when `rows` (one logits row per token) came, the top k."""
    logprobs = logprobs or [None] * len(token_ids)
    scored = []
    for index, (token, logprob) in enumerate(zip(token_ids, logprobs, strict=False)):
        top = top_logprobs(rows[index], k) if rows is not None and k > 0 and index < len(rows) else []
        scored.append(Scored(token, logprob, top))
    return scored


def prompt(prompt_ids: list[int], rows: np.ndarray, k: int) -> list[Scored]:
    """The prompt's tokens scored by its own logits rows (row i predicts token i + 1)."""
    logprobs = token_logprobs(rows, prompt_ids)
    scored = [Scored(prompt_ids[0], None)]
    for index in range(1, len(prompt_ids)):
        top = top_logprobs(rows[index - 1], k) if k > 0 else []
        scored.append(Scored(prompt_ids[index], logprobs[index], top))
    return scored


def for_completion(tokenizer, scored: list[Scored], offset: int, k: int | None) -> CompletionLogprobs:
    """The legacy completions shape; `offset` is where the first token's text starts in the choice's text."""
    tokens = [tokenizer.token_text(item.token_id) for item in scored]
    offsets, position = [], offset
    for text in tokens:
        offsets.append(position)
        position += len(text)
    top = None
    if k is not None:
        top = []
        for text, item in zip(tokens, scored, strict=True):
            if item.logprob is None:
                top.append(None)
                continue
            entry = {}
            for token, logprob in item.top:  # most likely first: a text shared by several tokens keeps the best
                entry.setdefault(tokenizer.token_text(token), logprob)
            entry.setdefault(text, item.logprob)
            top.append(entry)
    return CompletionLogprobs(tokens=tokens, token_logprobs=[item.logprob for item in scored], top_logprobs=top,
                              text_offset=offsets)


def for_chat(tokenizer, token_bytes, scored: list[Scored]) -> ChoiceLogprobs:
    """The chat shape: every token and alternative with its own bytes (a part of a UTF-8 character
    keeps its real bytes, so clients can rebuild CJK and emoji)."""
    def alternative(token: int, logprob: float) -> dict:
        return {"token": tokenizer.token_text(token), "logprob": logprob, "bytes": list(token_bytes(token))}

    content = [TokenLogprob(token=tokenizer.token_text(item.token_id), logprob=item.logprob,
                            bytes=list(token_bytes(item.token_id)),
                            top_logprobs=[alternative(token, logprob) for token, logprob in item.top])
               for item in scored]
    return ChoiceLogprobs(content=content)
