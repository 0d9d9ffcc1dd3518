"""Parameters of the OpenAI API and of vLLM that this server does not implement and that would change the answer
if ignored: each is declared, so that a request using it gets a 400 naming it and saying why (or what to use
instead), never a silently different answer. A neutral value (the parameter's default) passes.

Parameters that do not change the answer (`store`, `metadata`, `service_tier`, `prediction`, ...) are accepted and
not used, as unknown fields are.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# name → (values that ask for nothing, why it is refused)
REFUSED: dict[str, tuple[tuple, str]] = {
    "functions": ((None, []), "The legacy `functions` are not supported: send them as `tools`."),
    "function_call": ((None, "none"), "The legacy `function_call` is not supported: use `tools` and `tool_choice`."),
    "modalities": ((None, ["text"]), "This model answers in text only."),
    "audio": ((None,), "This model has no audio output."),
    "web_search_options": ((None,), "This server does not search the web."),
    "min_p": ((None, 0, 0.0), "min_p sampling is not supported: use top_p or top_k."),
    "typical_p": ((None, 1, 1.0), "typical_p sampling is not supported: use top_p or top_k."),
    "top_a": ((None, 0, 0.0), "top_a sampling is not supported: use top_p or top_k."),
    "prompt_logprobs": ((None,), "prompt_logprobs is not supported: use echo with logprobs on /v1/completions."),
    "bad_words": ((None, []), "bad_words is not supported: ban their tokens with logit_bias -100."),
    "allowed_token_ids": ((None, []), "allowed_token_ids is not supported: use logit_bias, or guided_choice."),
    "include_stop_str_in_output": ((None, False), "include_stop_str_in_output is not supported: stop strings "
                                                  "are never part of the answer."),
    "spaces_between_special_tokens": ((None, True), "spaces_between_special_tokens=false is not supported."),
    "truncate_prompt_tokens": ((None,), "truncate_prompt_tokens is not supported: a prompt longer than the "
                                        "context is a 400, never cut."),
    "continue_final_message": ((None, False), "continue_final_message is not supported: send the final assistant "
                                              "text as a completion prompt instead."),
    "chat_template": ((None,), "A request's own chat_template is not supported: the model's template applies."),
    "chat_template_kwargs": ((None, {}), "chat_template_kwargs are not supported: the model's template applies "
                                         "as it is."),
    "documents": ((None, []), "documents (retrieval-augmented templates) are not supported."),
    "logits_processors": ((None, []), "Custom logits_processors are not supported."),
    "return_tokens_as_token_ids": ((None, False), "return_tokens_as_token_ids is not supported."),
}


class RefusedFields(BaseModel):
    """Declared so that the gateway sees them (unknown fields are dropped) and refuses them."""

    functions: Any = None
    function_call: Any = None
    modalities: Any = None
    audio: Any = None
    web_search_options: Any = None
    min_p: Any = None
    typical_p: Any = None
    top_a: Any = None
    prompt_logprobs: Any = None
    bad_words: Any = None
    allowed_token_ids: Any = None
    include_stop_str_in_output: Any = None
    spaces_between_special_tokens: Any = None
    truncate_prompt_tokens: Any = None
    continue_final_message: Any = None
    chat_template: Any = None
    chat_template_kwargs: Any = None
    documents: Any = None
    logits_processors: Any = None
    return_tokens_as_token_ids: Any = None


def refused(fields: BaseModel) -> tuple[str, str] | None:
    """The first refused parameter the request asks for, with why; None when it asks for none."""
    for name, (neutral, why) in REFUSED.items():
        value = getattr(fields, name, None)
        if not any(value == allowed and type(value) is type(allowed) for allowed in neutral):
            return name, why
    return None
