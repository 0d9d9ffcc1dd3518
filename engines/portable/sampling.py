"""Per-request sampling parameters, in TensorRT-LLM's terms where the two differ from OpenAI's."""
from __future__ import annotations

from dataclasses import dataclass, field

from engines.portable.grammar import Guide


@dataclass
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off; 1: greedy
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_length: int = 0
    end_id: int | None = None
    stop_token_sequences: list[list[int]] = field(default_factory=list)
    ignore_end_id: bool = False
    return_logprobs: bool = False
    guide: Guide | None = None  # constrained decoding (TensorRT-LLM's guided decoding)
    # Choices: `n` returned, `best_of` sampled (the n with the highest cumulative logprob are kept),
    # or beam search with `beam_width` beams returning the n best.
    n: int = 1
    best_of: int | None = None
    beam_width: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)  # added to the raw logits (OpenAI's logit_bias)
    # Raw logits rows handed back (TensorRT-LLM's context_logits and generation_logits), from which the
    # prompt's logprobs and each token's top alternatives are computed (engines/logprobs.py).
    return_context_logits: bool = False
    return_generation_logits: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def beam_search(self) -> bool:
        return self.beam_width > 1

    @property
    def num_sequences(self) -> int:
        """Sequences run at once for the request: its beams, or the `best_of` (else `n`) choices."""
        return self.beam_width if self.beam_search else max(self.n, self.best_of or self.n)

    @property
    def effective_end_id(self) -> int | None:
        if self.ignore_end_id or self.end_id is None or self.end_id < 0:
            return None
        return self.end_id

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.min_length < 0:
            raise ValueError(f"min_length must be >= 0, got {self.min_length}")
        self._validate_choices()

    def _validate_choices(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) must be at least n ({self.n})")
        if self.beam_width < 1:
            raise ValueError(f"beam_width must be at least 1, got {self.beam_width}")
        if self.beam_search and self.n > self.beam_width:
            raise ValueError(f"n ({self.n}) must not exceed beam_width ({self.beam_width})")
        if self.beam_search and self.guide is not None:
            raise ValueError("beam search with a grammar (guided decoding) is not supported")
        if self.beam_search and self.best_of not in (None, self.n, self.beam_width):
            raise ValueError("best_of has no meaning with beam search: the beams are the candidates")
        bad = [value for value in self.logit_bias.values() if value != value or abs(value) == float("inf")]
        if bad:
            raise ValueError("logit_bias values must be finite numbers")

    @classmethod
    def from_request(cls, request) -> "SamplingParams":
        """From the contract's `GenerationRequest`."""
        return cls(
            max_new_tokens=request.request_output_len,
            temperature=request.temperature,
            top_k=request.top_k,
            top_p=request.top_p,
            seed=request.random_seed,
            repetition_penalty=request.repetition_penalty,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            min_length=request.min_length,
            end_id=request.end_id,
            stop_token_sequences=[list(word) for word in request.stop_words],
            return_logprobs=request.return_log_probs,
            guide=Guide(request.guide_type, request.guide) if request.guide_type else None,
            beam_width=request.beam_width,
            n=request.beam_width,  # every beam comes back, best first, as from TensorRT-LLM
            length_penalty=request.len_penalty,
            early_stopping=request.early_stopping,
            logit_bias=dict(request.logit_bias),
            return_context_logits=request.return_context_logits,
            return_generation_logits=request.return_generation_logits,
        )
