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

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

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
        )
