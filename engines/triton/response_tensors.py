"""The output tensors of one response, built with as little Python as possible.

The sender thread builds one response per request per turn, and every microsecond of it is held under
the GIL that the engine thread and request intake share. A plain response (new tokens, maybe their
logprobs: no beams, no logits rows) is therefore built straight from the token lists, and only the
outputs the client asked for are built at all: Triton drops the others from the response anyway
(the gateway asks for `output_ids` and `sequence_length` unless a request wants logprobs). Anything
else goes through the contract's `encode_chunk`. Both give the same arrays; tests check that.

Nothing here imports Triton.
"""
from __future__ import annotations

import numpy as np

from engines import contract


def wanted(names) -> frozenset[str] | None:
    """The outputs a request asked for; None when it named none (Triton then returns every output)."""
    return frozenset(names) if names else None


def plain_tensors(ids: list[int], log_probs: list[float] | None, cum_log_prob: float | None,
                  outputs: frozenset[str] | None) -> dict[str, np.ndarray]:
    """`encode_chunk` of a plain chunk (one beam, no logits rows) restricted to `outputs`; `log_probs`, when
    given, has one value per id."""
    count = len(ids)
    tensors = {}
    if outputs is None or "output_ids" in outputs:
        tensors["output_ids"] = np.array(ids, dtype=np.int32).reshape(1, 1, count)
    if outputs is None or "sequence_length" in outputs:
        tensors["sequence_length"] = np.array([[count]], dtype=np.int32)
    if log_probs is not None and (outputs is None or "output_log_probs" in outputs):
        tensors["output_log_probs"] = np.array(log_probs, dtype=np.float32).reshape(1, 1, count)
    if (log_probs is not None or cum_log_prob is not None) and (outputs is None or "cum_log_probs" in outputs):
        cum = sum(log_probs or ()) if cum_log_prob is None else cum_log_prob
        tensors["cum_log_probs"] = np.array([[cum]], dtype=np.float32)
    return tensors


def chunk_tensors(chunk: contract.GenerationChunk, outputs: frozenset[str] | None) -> dict[str, np.ndarray]:
    """Any chunk (beams, logits rows): the contract's encoding, restricted to `outputs`."""
    tensors = contract.encode_chunk(chunk)
    if outputs is None:
        return tensors
    return {name: array for name, array in tensors.items() if name in outputs}
