"""Log-probabilities from raw logits rows: the prompt's tokens and each position's top alternatives.

Both engines hand back logits rows through the contract (`context_logits` for the prompt,
`generation_logits` for new tokens: TensorRT-LLM's outputs), and the gateway turns them into OpenAI's
logprobs here, so both engines give the same numbers. They are the model's raw distribution, before
temperature, penalties, logit_bias or top-k/top-p: vLLM's default (`logprobs_mode` "raw_logprobs").
"""
from __future__ import annotations

import numpy as np


def log_softmax(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    shifted = rows - rows.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def token_logprobs(rows: np.ndarray, tokens: list[int]) -> list[float | None]:
    """Logprob of each of `tokens` given the ones before it, where row i holds the logits after token
    i: the first token has none (OpenAI's echo gives it null)."""
    count = len(tokens) - 1
    if count <= 0:
        return [None] * len(tokens)
    logprobs = log_softmax(np.asarray(rows)[:count])
    picked = logprobs[np.arange(count), np.asarray(tokens[1:])]
    return [None] + [float(value) for value in picked]


def top_logprobs(row: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The `k` most likely tokens of one logits row with their logprobs, most likely first (ties by id)."""
    if k <= 0:
        return []
    logprobs = log_softmax(row)
    k = min(k, logprobs.shape[-1])
    candidates = np.argpartition(-logprobs, k - 1)[:k]
    ranked = sorted(candidates.tolist(), key=lambda token: (-logprobs[token], token))
    return [(token, float(logprobs[token])) for token in ranked]
