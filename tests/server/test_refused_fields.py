"""Parameters the server does not implement are refused by name; their neutral values pass."""
from __future__ import annotations

import pytest

from server.errors import APIError
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.refused_fields import REFUSED, RefusedFields
from server.sampling import check_supported

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


def test_every_refused_parameter_is_declared():
    assert set(REFUSED) == set(RefusedFields.model_fields)


@pytest.mark.parametrize("name, value", [("min_p", 0.1), ("prompt_logprobs", 0), ("functions", [{"name": "f"}]),
                                         ("spaces_between_special_tokens", False), ("modalities", ["audio"]),
                                         ("include_stop_str_in_output", True), ("chat_template_kwargs", {"a": 1})])
def test_a_request_asking_for_one_is_a_400_naming_it(name, value):
    for body in (CHAT, {"model": "m", "prompt": "Hi"}):
        kind = ChatCompletionRequest if "messages" in body else CompletionRequest
        with pytest.raises(APIError) as caught:
            check_supported(kind.model_validate({**body, name: value}))
        assert (caught.value.status, caught.value.param, caught.value.code) == (400, name, "unsupported_parameter")


@pytest.mark.parametrize("extra", [{}, {"min_p": 0.0}, {"typical_p": 1.0}, {"modalities": ["text"]},
                                   {"spaces_between_special_tokens": True}, {"include_stop_str_in_output": False},
                                   {"functions": []}, {"chat_template_kwargs": {}}, {"store": True}])
def test_neutral_values_and_harmless_fields_pass(extra):
    check_supported(ChatCompletionRequest.model_validate({**CHAT, **extra}))
