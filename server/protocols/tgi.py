"""Text Generation Inference's native bodies: /generate, /generate_stream, /tokenize, /info."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP_SEQUENCES = 16


class GenerateParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")

    best_of: int | None = Field(default=None, gt=0, lt=2**31)  # its upper bound: server/tgi.py, as TGI's router
    temperature: float | None = Field(default=None, gt=0.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    top_k: int | None = Field(default=None, gt=0, lt=2**31)
    top_p: float | None = Field(default=None, gt=0.0, lt=1.0)
    typical_p: float | None = Field(default=None, gt=0.0, lt=1.0)
    do_sample: bool = False
    max_new_tokens: int | None = Field(default=None, ge=0, lt=2**31)
    return_full_text: bool | None = None
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)
    truncate: int | None = Field(default=None, gt=0, lt=2**31)
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    seed: int | None = Field(default=None, ge=0, lt=2**64)
    top_n_tokens: int | None = Field(default=None, ge=0, lt=2**31)  # likewise
    grammar: Any = None
    adapter_id: str | None = None


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = False  # read by POST / and /invocations; /generate and /generate_stream decide themselves


class Token(BaseModel):
    id: int
    text: str
    logprob: float | None
    special: bool


class PrefillToken(BaseModel):
    id: int
    text: str
    logprob: float | None


class BestOfSequence(BaseModel):
    generated_text: str
    finish_reason: str
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken] = Field(default_factory=list)
    tokens: list[Token] = Field(default_factory=list)
    top_tokens: list[list[Token]] | None = None  # left out when empty, as TGI does


class Details(BaseModel):
    finish_reason: str
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken] = Field(default_factory=list)
    tokens: list[Token] = Field(default_factory=list)
    best_of_sequences: list[BestOfSequence] | None = None  # only with best_of > 1
    top_tokens: list[list[Token]] | None = None  # only with top_n_tokens > 0


def dump_tgi(model: BaseModel) -> dict:
    """TGI's JSON: `top_tokens` and `best_of_sequences` are left out when empty (nullable fields such as
    `seed` stay, as null)."""
    def prune(value):
        if isinstance(value, dict):
            return {key: prune(item) for key, item in value.items()
                    if not (key in OMITTED_WHEN_EMPTY and not item)}
        if isinstance(value, list):
            return [prune(item) for item in value]
        return value

    return prune(model.model_dump())


OMITTED_WHEN_EMPTY = frozenset({"top_tokens", "best_of_sequences"})


class GenerateResponse(BaseModel):
    generated_text: str
    details: Details | None = None


class StreamDetails(BaseModel):
    finish_reason: str
    generated_tokens: int
    seed: int | None
    input_length: int


class StreamResponse(BaseModel):
    index: int
    token: Token
    generated_text: str | None = None
    details: StreamDetails | None = None
    top_tokens: list[Token] | None = None


class SimpleToken(BaseModel):
    id: int
    text: str
    start: int
    stop: int


class Info(BaseModel):
    model_id: str
    model_sha: str | None = None
    model_pipeline_tag: str | None = "text-generation"
    max_concurrent_requests: int
    max_best_of: int = 1
    max_stop_sequences: int = MAX_STOP_SEQUENCES
    max_input_tokens: int
    max_total_tokens: int
    validation_workers: int = 1
    max_client_batch_size: int = 1
    router: str = "ingot"
    version: str
    sha: str | None = None
    docker_label: str | None = None
