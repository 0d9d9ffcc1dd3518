"""The one tensor contract between the gateway and the Triton model named `tensorrt_llm`.

It mirrors the `tensorrt_llm` model of NVIDIA's tensorrtllm_backend
(all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt): same names, dtypes and shapes, so the
gateway works unchanged against the real TensorRT-LLM backend and against the portable engine.

`max_batch_size` > 0 with dynamic batching, so every tensor a client sends carries a leading batch
dimension of 1: `input_ids` is [1, N], scalars are [1, 1], `stop_words_list` is [1, 2, L].
Token ids cross the wire, never text.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MODEL_NAME = "tensorrt_llm"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton type name without the TYPE_ prefix
    dims: tuple[int, ...]
    optional: bool = False
    ragged: bool = False
    scalar: bool = False  # dims [1] reshaped to [] in the real backend's config
    trtllm_since: str | None = None  # first tensorrtllm_backend release whose config.pbtxt has it

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(NUMPY_DTYPES[self.dtype])

    @property
    def max_value(self) -> int | float:
        """The largest value the tensor's dtype holds: the gateway bounds request fields by it (no silent wrap)."""
        dtype = self.numpy_dtype
        return int(np.iinfo(dtype).max) if dtype.kind in "iu" else float(np.finfo(dtype).max)

    @property
    def wire_dtype(self) -> str:
        """The datatype a client names: config.pbtxt's TYPE_STRING travels as BYTES."""
        return "BYTES" if self.dtype == "STRING" else self.dtype


NUMPY_DTYPES = {"INT32": np.int32, "UINT64": np.uint64, "FP32": np.float32, "FP16": np.float16, "BOOL": np.bool_,
                "STRING": np.object_}


def _scalar(name: str, dtype: str) -> TensorSpec:
    return TensorSpec(name, dtype, (1,), optional=True, scalar=True)


INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("input_ids", "INT32", (-1,), ragged=True),
    TensorSpec("input_lengths", "INT32", (1,), scalar=True),
    TensorSpec("request_output_len", "INT32", (1,)),
    TensorSpec("draft_input_ids", "INT32", (-1,), optional=True, ragged=True),
    TensorSpec("draft_logits", "FP32", (-1, -1), optional=True, ragged=True),
    _scalar("draft_acceptance_threshold", "FP32"),
    _scalar("end_id", "INT32"),
    _scalar("pad_id", "INT32"),
    TensorSpec("stop_words_list", "INT32", (2, -1), optional=True, ragged=True),
    TensorSpec("bad_words_list", "INT32", (2, -1), optional=True, ragged=True),
    TensorSpec("embedding_bias", "FP32", (-1,), optional=True, ragged=True),
    _scalar("beam_width", "INT32"),
    _scalar("temperature", "FP32"),
    _scalar("runtime_top_k", "INT32"),
    _scalar("runtime_top_p", "FP32"),
    _scalar("runtime_top_p_min", "FP32"),
    _scalar("runtime_top_p_decay", "FP32"),
    _scalar("runtime_top_p_reset_ids", "INT32"),
    _scalar("len_penalty", "FP32"),
    _scalar("early_stopping", "BOOL"),
    _scalar("repetition_penalty", "FP32"),
    _scalar("min_length", "INT32"),
    _scalar("beam_search_diversity_rate", "FP32"),
    _scalar("presence_penalty", "FP32"),
    _scalar("frequency_penalty", "FP32"),
    _scalar("random_seed", "UINT64"),
    _scalar("return_log_probs", "BOOL"),
    _scalar("return_context_logits", "BOOL"),
    _scalar("return_generation_logits", "BOOL"),
    TensorSpec("stop", "BOOL", (1,), optional=True),
    TensorSpec("streaming", "BOOL", (1,), optional=True),
    TensorSpec("prompt_embedding_table", "FP16", (-1, -1), optional=True, ragged=True),
    _scalar("prompt_vocab_size", "INT32"),
    _scalar("lora_task_id", "UINT64"),
    TensorSpec("lora_weights", "FP16", (-1, -1), optional=True, ragged=True),
    TensorSpec("lora_config", "INT32", (-1, 3), optional=True, ragged=True),
    # Guided decoding: TensorRT-LLM's GuidedDecodingParams (guide types json, json_schema, regex, ebnf_grammar;
    # the portable engine adds structural_tag). In tensorrtllm_backend's config.pbtxt from v0.19.0 on.
    TensorSpec("guided_decoding_guide_type", "STRING", (1,), optional=True, ragged=True, trtllm_since="0.19.0"),
    TensorSpec("guided_decoding_guide", "STRING", (1,), optional=True, ragged=True, trtllm_since="0.19.0"),
)

OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("output_ids", "INT32", (-1, -1)),
    TensorSpec("sequence_length", "INT32", (-1,)),
    TensorSpec("cum_log_probs", "FP32", (-1,)),
    TensorSpec("output_log_probs", "FP32", (-1, -1)),
    TensorSpec("context_logits", "FP32", (-1, -1)),
    TensorSpec("generation_logits", "FP32", (-1, -1, -1)),
)

INPUT_SPECS = {spec.name: spec for spec in INPUTS}
OUTPUT_SPECS = {spec.name: spec for spec in OUTPUTS}


@dataclass
class GenerationRequest:
    """What one request asks of an engine, in the contract's vocabulary."""

    input_ids: list[int]
    request_output_len: int
    end_id: int | None = None
    pad_id: int | None = None
    streaming: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    random_seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_length: int = 0
    stop_words: list[list[int]] = field(default_factory=list)
    return_log_probs: bool = False
    beam_width: int = 1
    stop: bool = False
    guide_type: str | None = None  # guided decoding: json, json_schema, regex, ebnf_grammar, structural_tag
    guide: str | None = None
    len_penalty: float = 1.0  # beam search: score = cum_log_probs / length ** len_penalty
    early_stopping: bool = False  # beam search: end once beam_width hypotheses are finished
    logit_bias: dict[int, float] = field(default_factory=dict)  # sent as the dense `embedding_bias`
    vocab_size: int | None = None  # the width of `embedding_bias`: the model's logits
    return_context_logits: bool = False  # the prompt's logits rows: prompt logprobs (echo)
    return_generation_logits: bool = False  # each new token's logits row: top logprobs
    # LoRA, TensorRT-LLM's cache semantics: the first request of a task id carries the adapter's weights and
    # config (engines/lora_format.py), later ones only the id; an id the engine has not cached is an error
    lora_task_id: int | None = None
    lora_weights: np.ndarray | None = None  # [rows, D·Hi + Ho·D] FP16
    lora_config: np.ndarray | None = None  # [rows, 3] INT32: module id, layer, adapter size
    model: str | None = None  # the gateway's: the requested model id (an adapter name picks a LoRA); not sent


@dataclass
class GenerationChunk:
    """One response of the decoupled model: the tokens new since the last response."""

    output_ids: list[int]
    log_probs: list[float] | None = None
    final: bool = False
    cum_log_prob: float | None = None  # of the whole sequence so far (beam search: its search score)
    generation_logits: np.ndarray | None = None  # [tokens, vocab]: raw logits row of each new token
    context_logits: np.ndarray | None = None  # [prompt_len, vocab]: the prompt's raw logits, on the first response
    beams: list["GenerationChunk"] = field(default_factory=list)  # beam search: the beams after this one, best first


def encode_stop_words(words: list[list[int]]) -> np.ndarray:
    """TensorRT-LLM's [2, L] layout: row 0 the concatenated ids, row 1 the end offsets padded with -1."""
    flat = [token for word in words for token in word]
    offsets = list(np.cumsum([len(word) for word in words]))
    width = max(len(flat), len(offsets), 1)
    out = np.full((2, width), -1, dtype=np.int32)
    out[0, : len(flat)] = flat
    out[1, : len(offsets)] = offsets
    if not flat:
        out[0, 0] = 0
    return out


def decode_stop_words(array: np.ndarray) -> list[list[int]]:
    array = np.asarray(array).reshape(2, -1)
    ids, offsets = array[0], [int(o) for o in array[1] if o >= 0]
    words, start = [], 0
    for end in offsets:
        if end > start:
            words.append([int(t) for t in ids[start:end]])
        start = end
    return words


def encode_request(request: GenerationRequest) -> dict[str, np.ndarray]:
    """Contract tensors for one request, each with its leading batch dimension of 1."""
    if request.random_seed is not None and not 0 <= request.random_seed < 2**64:
        raise ValueError("random_seed must fit in an unsigned 64-bit integer")
    values: dict[str, object] = {
        "input_lengths": len(request.input_ids),
        "request_output_len": request.request_output_len,
        "streaming": request.streaming,
        "temperature": request.temperature,
        "runtime_top_k": request.top_k,
        "runtime_top_p": request.top_p,
        "repetition_penalty": request.repetition_penalty,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "min_length": request.min_length,
        "return_log_probs": request.return_log_probs,
        "beam_width": request.beam_width,
    }
    for name, value in (("end_id", request.end_id), ("pad_id", request.pad_id), ("random_seed", request.random_seed)):
        if value is not None:
            values[name] = value
    tensors = {name: np.array([[value]], dtype=INPUT_SPECS[name].numpy_dtype) for name, value in values.items()}
    for name in ("return_context_logits", "return_generation_logits", "early_stopping"):
        if getattr(request, name):
            tensors[name] = np.array([[True]])
    if request.beam_width > 1:
        tensors["len_penalty"] = np.array([[request.len_penalty]], dtype=np.float32)
    if request.logit_bias:
        tensors["embedding_bias"] = encode_logit_bias(request.logit_bias, request.vocab_size)[None]
    tensors["input_ids"] = np.array([request.input_ids], dtype=np.int32)
    if request.stop_words:
        tensors["stop_words_list"] = encode_stop_words(request.stop_words)[None]
    if request.stop:
        tensors["stop"] = np.array([[True]])
    if request.lora_task_id is not None:
        tensors.update(encode_lora(request))
    if request.guide_type:
        tensors["guided_decoding_guide_type"] = np.array([[request.guide_type.encode()]], dtype=np.object_)
        tensors["guided_decoding_guide"] = np.array([[(request.guide or "").encode()]], dtype=np.object_)
    return tensors


def _first(tensors: dict[str, np.ndarray], name: str, default):
    array = tensors.get(name)
    if array is None or np.asarray(array).size == 0:
        return default
    value = np.asarray(array).reshape(-1)[0]
    return value.item() if isinstance(value, np.generic) else value  # BYTES tensors hold bytes objects


def decode_request(tensors: dict[str, np.ndarray]) -> GenerationRequest:
    """The engine side of `encode_request`: accepts the shapes with or without the batch dimension."""
    missing = [spec.name for spec in INPUTS if not spec.optional and spec.name not in tensors]
    if missing:
        raise ValueError(f"missing required input tensors: {', '.join(missing)}")
    input_ids = np.asarray(tensors["input_ids"]).reshape(-1)
    length = int(_first(tensors, "input_lengths", input_ids.size))
    if not 0 < length <= input_ids.size:
        raise ValueError(f"input_lengths={length} does not fit input_ids of {input_ids.size} tokens")
    seed = _first(tensors, "random_seed", None)
    stop_words = tensors.get("stop_words_list")
    return GenerationRequest(
        input_ids=input_ids[:length].astype(np.int64).tolist(),
        request_output_len=int(_first(tensors, "request_output_len", 0)),
        end_id=_optional_int(_first(tensors, "end_id", None)),
        pad_id=_optional_int(_first(tensors, "pad_id", None)),
        streaming=bool(_first(tensors, "streaming", False)),
        temperature=float(_first(tensors, "temperature", 1.0)),
        top_k=int(_first(tensors, "runtime_top_k", 0)),
        top_p=float(_first(tensors, "runtime_top_p", 1.0)),
        random_seed=None if seed is None else int(seed),
        repetition_penalty=float(_first(tensors, "repetition_penalty", 1.0)),
        presence_penalty=float(_first(tensors, "presence_penalty", 0.0)),
        frequency_penalty=float(_first(tensors, "frequency_penalty", 0.0)),
        min_length=int(_first(tensors, "min_length", 0)),
        stop_words=[] if stop_words is None else decode_stop_words(stop_words),
        return_log_probs=bool(_first(tensors, "return_log_probs", False)),
        beam_width=int(_first(tensors, "beam_width", 1)),
        stop=bool(_first(tensors, "stop", False)),
        guide_type=_text(_first(tensors, "guided_decoding_guide_type", None)),
        guide=_text(_first(tensors, "guided_decoding_guide", None)),
        len_penalty=float(_first(tensors, "len_penalty", 1.0)),
        early_stopping=bool(_first(tensors, "early_stopping", False)),
        logit_bias=decode_logit_bias(tensors.get("embedding_bias")),
        return_context_logits=bool(_first(tensors, "return_context_logits", False)),
        return_generation_logits=bool(_first(tensors, "return_generation_logits", False)),
        lora_task_id=_optional_int(_first(tensors, "lora_task_id", None)),
        lora_weights=_lora_rows(tensors.get("lora_weights")),
        lora_config=_lora_rows(tensors.get("lora_config")),
    )


def encode_lora(request: GenerationRequest) -> dict[str, np.ndarray]:
    """`lora_task_id`, with the adapter's tensors when the request carries them (batch dimension added)."""
    if not 0 <= request.lora_task_id < 2**64:
        raise ValueError("lora_task_id must fit in an unsigned 64-bit integer")
    tensors = {"lora_task_id": np.array([[request.lora_task_id]], dtype=np.uint64)}
    if request.lora_weights is not None:
        tensors["lora_weights"] = np.asarray(request.lora_weights, dtype=np.float16)[None]
        tensors["lora_config"] = np.asarray(request.lora_config, dtype=np.int32)[None]
    return tensors


def _lora_rows(array) -> np.ndarray | None:
    """[rows, width] without the batch dimension of 1, or None when absent or empty."""
    if array is None or not np.asarray(array).size:
        return None
    array = np.asarray(array)
    return array[0] if array.ndim == 3 else array


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return value or None


def encode_logit_bias(bias: dict[int, float], vocab_size: int | None) -> np.ndarray:
    """OpenAI's sparse logit_bias as TensorRT-LLM's `embedding_bias`: one FP32 value per vocabulary
    entry, added to the logits."""
    if vocab_size is None:
        raise ValueError("logit_bias needs the model's vocabulary size")
    bad = [token for token in bias if not 0 <= token < vocab_size]
    if bad:
        raise ValueError(f"logit_bias token ids out of the vocabulary (size {vocab_size}): {bad[:5]}")
    dense = np.zeros(vocab_size, dtype=np.float32)
    for token, value in bias.items():
        dense[token] = value
    return dense


def decode_logit_bias(array) -> dict[int, float]:
    if array is None:
        return {}
    dense = np.asarray(array, dtype=np.float32).reshape(-1)
    return {int(token): float(dense[token]) for token in np.flatnonzero(dense)}


def _optional_int(value) -> int | None:
    return None if value is None else int(value)


def encode_chunk(chunk: GenerationChunk) -> dict[str, np.ndarray]:
    """Response tensors for one request, [batch, beam, tokens] as the real backend: beam search's final
    response carries every beam, padded to the longest, `sequence_length` giving each one's length."""
    beams = [chunk, *chunk.beams]
    width = max(len(beam.output_ids) for beam in beams)
    ids = np.zeros((1, len(beams), width), dtype=np.int32)
    for row, beam in enumerate(beams):
        ids[0, row, : len(beam.output_ids)] = beam.output_ids
    tensors = {
        "output_ids": ids,
        "sequence_length": np.array([[len(beam.output_ids) for beam in beams]], dtype=np.int32),
    }
    if chunk.log_probs is not None:
        log_probs = np.zeros((1, len(beams), width), dtype=np.float32)
        for row, beam in enumerate(beams):
            log_probs[0, row, : len(beam.log_probs or [])] = beam.log_probs or []
        tensors["output_log_probs"] = log_probs
    if chunk.log_probs is not None or any(beam.cum_log_prob is not None for beam in beams):
        tensors["cum_log_probs"] = np.array(
            [[sum(b.log_probs or []) if b.cum_log_prob is None else b.cum_log_prob for b in beams]], dtype=np.float32)
    if chunk.generation_logits is not None:
        tensors["generation_logits"] = np.asarray(chunk.generation_logits, dtype=np.float32)[None, None]
    if chunk.context_logits is not None:
        tensors["context_logits"] = np.asarray(chunk.context_logits, dtype=np.float32)[None]
    return tensors


def decode_chunk(tensors: dict[str, np.ndarray | None], final: bool) -> GenerationChunk:
    """The gateway side of `encode_chunk`: beam 0, the other beams in `beams`; `sequence_length`
    bounds each beam's valid ids."""
    ids = np.asarray(tensors["output_ids"])
    rows = ids.reshape(-1, ids.shape[-1]) if ids.size else np.zeros((1, 0), dtype=np.int32)
    length_array = tensors.get("sequence_length")
    lengths = ([int(n) for n in np.asarray(length_array).reshape(-1)] if length_array is not None
               else [rows.shape[1]] * rows.shape[0])
    log_probs = _rows(tensors.get("output_log_probs"))
    cum = tensors.get("cum_log_probs")
    cum = None if cum is None or not np.asarray(cum).size else np.asarray(cum, dtype=np.float64).reshape(-1)
    beams = []
    for row, length in enumerate(lengths[: rows.shape[0]]):
        beams.append(GenerationChunk(
            output_ids=[int(t) for t in rows[row][:length]],
            log_probs=None if log_probs is None else [float(x) for x in log_probs[row][:length]],
            final=final,
            cum_log_prob=None if cum is None or row >= cum.size else float(cum[row])))
    first = beams[0] if beams else GenerationChunk([], final=final)
    first.beams = beams[1:]
    first.generation_logits = _logits(tensors.get("generation_logits"))
    first.context_logits = _logits(tensors.get("context_logits"))
    return first


def _rows(array) -> np.ndarray | None:
    if array is None or not np.asarray(array).size:
        return None
    array = np.asarray(array)
    return array.reshape(-1, array.shape[-1])


def _logits(array) -> np.ndarray | None:
    """[tokens, vocab] rows of beam 0 from `context_logits` [1, P, V] or `generation_logits` [1, B, T, V]."""
    if array is None or np.asarray(array).ndim < 2 or not np.asarray(array).size:
        return None
    array = np.asarray(array, dtype=np.float32)
    while array.ndim > 2:
        array = array[0]
    return array


# The embedding model: a second Triton model in the same repository, for /v1/embeddings. One request is
# one input's token ids ([1, N], the model's special tokens included); Triton's dynamic batcher gathers
# requests from every client into one forward pass (ragged, so inputs of any length batch together).
EMBEDDING_MODEL_NAME = "embedding"
EMBEDDING_INPUTS: tuple[TensorSpec, ...] = (TensorSpec("input_ids", "INT32", (-1,), ragged=True),)
EMBEDDING_OUTPUTS: tuple[TensorSpec, ...] = (TensorSpec("embedding", "FP32", (-1,)),)


def choice_seed(seed: int, index: int) -> int:
    """The seed of choice `index` of a request seeded with `seed`. Choice 0 keeps the request's seed,
    so n=1 is unchanged; the others are spread by the golden-ratio increment, so their streams differ.
    The portable engine's forked choices and the gateway's fanned-out requests use the same seeds,
    so a seeded request gives the same choices either way."""
    return seed if index == 0 else (seed + index * 0x9E37_79B9_7F4A_7C15) % 2**64
