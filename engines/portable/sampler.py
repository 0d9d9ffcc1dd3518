"""Batched sampling: penalties, min length, temperature, top-k, top-p, greedy, per-request seeds, logprobs.

Penalties follow their usual definitions: the repetition penalty (as in transformers and TensorRT-LLM)
divides positive logits and multiplies negative ones of every token seen in the prompt or output;
presence and frequency penalties (as in OpenAI's API) subtract a constant and a per-occurrence amount
for tokens of the output. A request with a seed draws its noise from its own generator, so its tokens
do not depend on what else is in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engines.portable.grammar import GrammarMask, apply_mask
from engines.portable.host_copies import to_device
from engines.portable.sequence import Sequence


def _padded(rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(row) for row in rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        valid[index, : len(row)] = True
    return to_device(ids, device), to_device(valid, device)


def _penalised(seqs: list[Sequence]) -> tuple[bool, bool]:
    """Whether any sequence asks for a repetition penalty, and for a presence or frequency one."""
    repetition = any(s.params.repetition_penalty != 1.0 for s in seqs)
    return repetition, any(s.params.presence_penalty != 0 or s.params.frequency_penalty != 0 for s in seqs)


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    device, vocab = logits.device, logits.shape[-1]
    repetition_wanted, additive_wanted = _penalised(seqs)
    if repetition_wanted:
        repetition = to_device([s.params.repetition_penalty for s in seqs], device)
        ids, valid = _padded([s.token_ids for s in seqs], device)
        seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, ids, valid)
        penalised = torch.where(logits > 0, logits / repetition[:, None], logits * repetition[:, None])
        logits = torch.where(seen, penalised, logits)
    if additive_wanted:
        presence = to_device([s.params.presence_penalty for s in seqs], device)
        frequency = to_device([s.params.frequency_penalty for s in seqs], device)
        ids, valid = _padded([s.output_token_ids for s in seqs], device)
        counts = torch.zeros(len(seqs), vocab, device=device).scatter_add_(1, ids, valid.float())
        logits = logits - frequency[:, None] * counts - presence[:, None] * (counts > 0).float()
    return logits


def apply_logit_bias(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """OpenAI's logit_bias (TensorRT-LLM's embedding_bias): a per-token amount added to the raw logits
    before anything else, so penalties, temperature and the filters all see the biased values."""
    if not any(seq.params.logit_bias for seq in seqs):
        return logits
    rows, ids, values = [], [], []
    for row, seq in enumerate(seqs):
        for token, value in seq.params.logit_bias.items():
            rows.append(row), ids.append(token), values.append(value)
    bias = torch.zeros_like(logits)
    index = (to_device(rows, logits.device), to_device(ids, logits.device))
    bias.index_put_(index, to_device(values, logits.device, logits.dtype))
    return logits + bias


def _ending_tokens(seq: Sequence) -> list[int]:
    """Tokens that would end `seq` if sampled now: its end id, and the last token of every stop
    sequence whose other tokens already end the output."""
    tokens = [] if seq.params.effective_end_id is None else [seq.params.effective_end_id]
    output = seq.output_token_ids
    for stop in seq.params.stop_token_sequences:
        head = stop[:-1]
        if stop and len(head) <= len(output) and output[len(output) - len(head):] == head:
            tokens.append(stop[-1])
    return tokens


def apply_min_length(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Below `min_length` new tokens, nothing that would end the request can be sampled. The end id
    is not part of the output, so it is masked while fewer than `min_length` tokens exist; a stop
    sequence is, so its last token is masked while the output would still be too short with it."""
    for row, seq in enumerate(seqs):
        produced, minimum = seq.num_output_tokens, seq.params.min_length
        if produced >= minimum:
            continue
        end_id = seq.params.effective_end_id
        for token in _ending_tokens(seq):
            if token == end_id or produced + 1 < minimum:
                logits[row, token] = float("-inf")
    return logits


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=logits.device)[None, :]
    drop = rank >= k[:, None]
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability mass ranked above each token
    drop |= (before >= top_p[:, None]) & (rank > 0)  # the smallest set reaching top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)


def _exponential_noise(seqs: list[Sequence], shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Exponential noise per row: a seeded row's from its own generator, drawn in place (one kernel per
    row, the same numbers as a fresh tensor of its size), the others' from the global one in one call."""
    noise = torch.empty(shape, device=device)
    if any(seq.generator is None for seq in seqs):
        noise.exponential_()
    for row, seq in enumerate(seqs):
        if seq.generator is not None:
            noise[row].exponential_(generator=seq.generator)
    return noise


def argmax_is_next(seq: Sequence, pending: int = 0) -> bool:
    """Whether the argmax of the raw logits is this sequence's next token, with `pending` tokens of it
    not appended yet: greedy, no penalties or bias, no grammar, min_length reached (so nothing is masked),
    one sequence (beams choose among several), and no logits rows to hand back."""
    p = seq.params
    return (seq.grammar is None and p.greedy and p.repetition_penalty == 1.0 and p.presence_penalty == 0
            and p.frequency_penalty == 0 and seq.num_output_tokens + pending >= p.min_length
            and not p.logit_bias and not p.beam_search and not p.return_generation_logits)


def chosen_on_device(seq: Sequence) -> bool:
    """Whether this sequence's next token can be chosen by `choose` behind a pipelined launch, once its
    previous token is appended: anything but a beam (chosen among several) or a request that wants its
    logits rows back."""
    return not seq.params.beam_search and not seq.params.return_generation_logits


@torch.inference_mode()  # the masks write into the logits, which may be a CUDA graph's (inference) output
def sample(logits: torch.Tensor, seqs: list[Sequence],
           grammar_mask: GrammarMask | None = None) -> tuple[list[int], list[float]]:
    """Next token of each sequence and its log-probability under the model's raw distribution.
    `grammar_mask` holds the tokens each constrained row's grammar allows next."""
    if all(argmax_is_next(seq) for seq in seqs):
        # one read-back for both answers; token ids are exact in float64
        chosen = logits.argmax(dim=-1)
        logprob = logits.gather(1, chosen[:, None])[:, 0] - logits.logsumexp(dim=-1)
        both = torch.stack((chosen.double(), logprob.double())).cpu()
        return both[0].long().tolist(), both[1].tolist()
    chosen, token_logprobs = choose(logits, seqs, grammar_mask)
    return chosen.tolist(), token_logprobs.tolist()


@torch.inference_mode()
def choose(logits: torch.Tensor, seqs: list[Sequence],
           grammar_mask: GrammarMask | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample` on the device: each row's next token (long) and its raw log-probability, nothing read
    back, so a pipelined launch can queue it behind its forward. Penalties, min_length and the grammar
    see each sequence as it is now: every token before this step appended."""
    return complete_choice(prepare_choice(logits, seqs), grammar_mask)


@dataclass
class PreparedChoice:
    """What `choose` queues before it needs the grammar bitmask: the raw log-probabilities, the logits
    after bias, penalties and min_length, and the sampled rows' parameters and noise."""

    logits: torch.Tensor
    logprobs: torch.Tensor
    sampled: tuple[torch.Tensor, ...] | None  # rows, temperature, top_k, top_p, noise


@torch.inference_mode()
def prepare_choice(logits: torch.Tensor, seqs: list[Sequence]) -> PreparedChoice:
    """The part of `choose` that does not depend on the grammar, so that it can be queued while the
    bitmask is still being filled on the host."""
    logprobs = logits.log_softmax(dim=-1)
    logits = apply_min_length(apply_penalties(apply_logit_bias(logits, seqs), seqs), seqs)
    sampled_rows = [row for row, seq in enumerate(seqs) if not seq.params.greedy]
    if not sampled_rows:
        return PreparedChoice(logits, logprobs, None)
    device, subset = logits.device, [seqs[row] for row in sampled_rows]
    rows = to_device(sampled_rows, device)
    temperature = to_device([s.params.temperature for s in subset], device)
    top_k = to_device([s.params.top_k for s in subset], device)
    top_p = to_device([s.params.top_p for s in subset], device)
    noise = _exponential_noise(subset, (len(subset), logits.shape[-1]), device)
    return PreparedChoice(logits, logprobs, (rows, temperature, top_k, top_p, noise))


@torch.inference_mode()
def complete_choice(prepared: PreparedChoice, grammar_mask: GrammarMask | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rest of `choose`: the grammar's mask, then the argmax, or top-k/top-p sampling for sampled rows."""
    logits = apply_mask(prepared.logits, grammar_mask)
    chosen = logits.argmax(dim=-1)
    if prepared.sampled is not None:
        rows, temperature, top_k, top_p, noise = prepared.sampled
        probs = apply_top_k_top_p(logits[rows] / temperature[:, None], top_k, top_p).softmax(dim=-1)
        chosen[rows] = (probs / noise).argmax(dim=-1)
    return chosen, prepared.logprobs.gather(1, chosen[:, None])[:, 0]
