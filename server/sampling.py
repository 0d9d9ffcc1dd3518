"""OpenAI sampling fields checked and turned into one engine request (the contract's vocabulary)."""
from __future__ import annotations

from engines import contract
from server.errors import APIError, bad_request
from server.generation import GenerationPlan
from server.protocol import SamplingFields
from server.refused_fields import refused
from server.tokenizer import Tokenizer



def check_model(requested: str, served) -> None:
    """`served`: the model's name, or the ServedModel (whose aliases, INGOT_MODEL_ALIASES, are accepted too)."""
    name = served if isinstance(served, str) else served.name
    if requested != name and (isinstance(served, str) or not served.answers_to(requested)):
        raise APIError(404, f"The model '{requested}' does not exist. This server serves '{name}'.",
                       "invalid_request_error", "model", "model_not_found")


def check_supported(fields: SamplingFields) -> None:
    """A 400 naming the first parameter the server does not implement (server/refused_fields.py)."""
    found = refused(fields)
    if found is not None:
        name, why = found
        raise bad_request(why, name, "unsupported_parameter")


def output_budget(requested: int | None, prompt_tokens: int, max_model_len: int, param: str = "messages") -> int:
    """Tokens the answer may use: the request's max, or what the context has left when it asks for none.

    Asking for more than the context holds is a 400 with the numbers, as OpenAI and vLLM answer, never a
    silent cap."""
    room = max_model_len - prompt_tokens
    if room <= 0:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens, but the prompt has "
            f"{prompt_tokens} tokens. Shorten the prompt.", param, "context_length_exceeded")
    if requested is not None and requested > room:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the {param}, {requested} for the "
            f"completion). Please reduce the length of the {param} or the completion.", "max_tokens",
            "context_length_exceeded")
    return room if requested is None else requested


def plan_generation(fields: SamplingFields, prompt_ids: list[int], tokenizer: Tokenizer, max_tokens: int,
                    return_log_probs: bool = False) -> GenerationPlan:
    bad_ids = [t for t in (fields.stop_token_ids or []) if not 0 <= t < tokenizer.vocab_size]
    if bad_ids:
        raise bad_request(f"stop_token_ids out of the vocabulary (size {tokenizer.vocab_size}): {bad_ids}",
                          "stop_token_ids")
    temperature = 1.0 if fields.temperature is None else fields.temperature
    greedy = temperature == 0.0
    request = contract.GenerationRequest(
        input_ids=prompt_ids,
        request_output_len=max_tokens,
        end_id=None if fields.ignore_eos else tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        streaming=True,
        temperature=1.0 if greedy else temperature,
        top_k=1 if greedy else (fields.top_k or 0),
        top_p=1.0 if fields.top_p is None else fields.top_p,
        random_seed=fields.seed,
        repetition_penalty=fields.repetition_penalty or 1.0,
        presence_penalty=fields.presence_penalty,
        frequency_penalty=fields.frequency_penalty,
        min_length=min(fields.min_tokens, max_tokens),
        stop_words=[[t] for t in (fields.stop_token_ids or [])],
        return_log_probs=return_log_probs,
        logit_bias=parse_logit_bias(fields.logit_bias, tokenizer.vocab_size),
        vocab_size=tokenizer.vocab_size,
        model=getattr(fields, "model", None),  # an adapter's name: server/lora.py adds its task id
    )
    return GenerationPlan(request, fields.stop_strings(), fields.skip_special_tokens)


MAX_LOGIT_BIAS = 100.0  # OpenAI's bound: -100 bans a token, 100 makes it the only choice


def parse_logit_bias(raw: dict | None, vocab_size: int) -> dict[int, float]:
    """OpenAI's logit_bias: token ids (JSON object keys, so strings) to values in [-100, 100]."""
    bias = {}
    for key, value in (raw or {}).items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise bad_request(f"logit_bias keys must be token ids, got {key!r}.", "logit_bias") from None
        if not 0 <= token < vocab_size:
            raise bad_request(f"logit_bias token id {token} is out of the vocabulary (size {vocab_size}).",
                              "logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value == value:
            raise bad_request(f"logit_bias value for token {token} must be a number, got {value!r}.", "logit_bias")
        if not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise bad_request(f"logit_bias value for token {token} is {value}; values must be between "
                              f"-{MAX_LOGIT_BIAS:g} and {MAX_LOGIT_BIAS:g}.", "logit_bias")
        bias[token] = float(value)
    return bias
