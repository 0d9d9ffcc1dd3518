"""TGI's parameter rules, as its router applies them, without a server."""
from __future__ import annotations

import pytest

from server.errors import APIError
from server.protocols.tgi import BestOfSequence, Details, GenerateParameters, Token, dump_tgi
from server.tgi import MAX_BEST_OF, MAX_TOP_N_TOKENS, guide_of, refuse_unsupported, samples, tgi_status


@pytest.mark.parametrize("parameters, sampled", [
    ({}, False),
    ({"temperature": 1.0}, False),
    ({"do_sample": True}, True),
    ({"temperature": 0.7}, True),
    ({"top_k": 5}, True),
    ({"top_p": 0.9}, True),
])
def test_greedy_unless_asked_to_sample(parameters, sampled):
    assert samples(GenerateParameters(**parameters)) is sampled


@pytest.mark.parametrize("parameters, param", [
    ({"watermark": True}, "watermark"),
    ({"typical_p": 0.5}, "typical_p"),
    ({"adapter_id": "x"}, "adapter_id"),
])
def test_unsupported_parameters_are_refused_not_ignored(parameters, param):
    with pytest.raises(APIError) as caught:
        refuse_unsupported(GenerateParameters(**parameters), streaming=False)
    assert caught.value.param == param and caught.value.status == 400


def test_best_of_one_and_defaults_pass():
    refuse_unsupported(GenerateParameters(best_of=1, watermark=False, top_n_tokens=0), streaming=True)


def test_best_of_top_n_tokens_and_prefill_details_pass_where_tgi_takes_them():
    refuse_unsupported(GenerateParameters(best_of=MAX_BEST_OF, do_sample=True, top_n_tokens=MAX_TOP_N_TOKENS,
                                          decoder_input_details=True, details=True), streaming=False)
    refuse_unsupported(GenerateParameters(top_n_tokens=2, details=True), streaming=True)


@pytest.mark.parametrize("parameters, streaming, param, message", [
    ({"best_of": 2, "do_sample": True}, True, "best_of", "`best_of` != 1 is not supported when streaming tokens"),
    ({"best_of": 2}, False, "best_of", "you must use sampling when `best_of` is > 1"),
    ({"best_of": 2, "temperature": 1.0}, False, "best_of", "you must use sampling"),
    ({"best_of": 2, "do_sample": True, "seed": 3}, False, "seed", "`seed` must not be set when `best_of` > 1"),
    ({"best_of": MAX_BEST_OF + 1, "do_sample": True}, False, "best_of",
     f"`best_of` must be > 0 and <= {MAX_BEST_OF}. Given: {MAX_BEST_OF + 1}"),
    ({"top_n_tokens": 6}, False, "top_n_tokens", "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
    ({"decoder_input_details": True}, True, "decoder_input_details",
     "`decoder_input_details` == true is not supported when streaming tokens"),
])
def test_tgi_router_rules(parameters, streaming, param, message):
    with pytest.raises(APIError) as caught:
        refuse_unsupported(GenerateParameters(**parameters), streaming=streaming)
    assert caught.value.param == param and caught.value.status == 400
    assert message in caught.value.message


def test_tgi_json_leaves_out_empty_top_tokens_and_best_of_sequences_but_keeps_null_seeds():
    token = Token(id=1, text="a", logprob=-0.5, special=False)
    plain = dump_tgi(Details(finish_reason="length", generated_tokens=1, seed=None, tokens=[token]))
    assert plain == {"finish_reason": "length", "generated_tokens": 1, "seed": None, "prefill": [],
                     "tokens": [token.model_dump()]}
    full = dump_tgi(Details(finish_reason="length", generated_tokens=1, seed=7, tokens=[token], top_tokens=[[token]],
                            best_of_sequences=[BestOfSequence(generated_text="a", finish_reason="length",
                                                              generated_tokens=1, seed=8, tokens=[token])]))
    assert full["top_tokens"] == [[token.model_dump()]]
    assert "top_tokens" not in full["best_of_sequences"][0] and full["best_of_sequences"][0]["seed"] == 8


@pytest.mark.parametrize("status, tgi", [(400, 422), (404, 422), (401, 401), (429, 429), (500, 424), (503, 503)])
def test_statuses_follow_tgi(status, tgi):
    assert tgi_status(APIError(status, "m")) == tgi


def test_grammars_become_the_contracts_guides():
    assert guide_of({"type": "regex", "value": "[0-9]+"}) == ("regex", "[0-9]+")
    assert guide_of({"type": "json", "value": {"type": "object"}}) == ("json_schema", '{"type": "object"}')
    assert guide_of({"type": "json", "value": '{"type": "integer"}'}) == ("json_schema", '{"type": "integer"}')
    for bad in ({"type": "ebnf", "value": "x"}, {"type": "regex", "value": ""}, {"type": "json", "value": "{"}, "x"):
        with pytest.raises(APIError):
            guide_of(bad)
