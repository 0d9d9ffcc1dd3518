"""TGI's parameter rules, as its router applies them, without a server."""
from __future__ import annotations

import pytest

from server.app import ServedModel
from server.errors import APIError
from server.lora import AdapterRegistry
from server.protocols.tgi import BestOfSequence, Details, GenerateParameters, Token, dump_tgi
from server.tgi import MAX_BEST_OF, MAX_TOP_N_TOKENS, guide_of, model_of, refuse_unsupported, samples, tgi_status


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


def served(tmp_path, adapters: dict[str, int] | None) -> ServedModel:
    registry = None
    if adapters is not None:
        registry = AdapterRegistry("demo-llama")
        registry.add_packed(tmp_path, {name: {"task_id": task, "path": name} for name, task in adapters.items()})
    return ServedModel("demo-llama", 512, 0, aliases=("demo",), adapters=registry)


def test_adapter_id_picks_a_served_adapter_and_the_base_by_its_names(tmp_path):
    model = served(tmp_path, {"support-bot": 7, "sql-writer": 9})
    assert model_of("support-bot", model) == "support-bot"
    assert model_of(None, model) == model_of("demo-llama", model) == model_of("demo", model) == "demo-llama"


@pytest.mark.parametrize("adapters, offered", [
    ({"support-bot": 7, "sql-writer": 9}, "the served adapters are sql-writer, support-bot"),
    ({}, "serves no LoRA adapters (start it with --lora NAME=PATH)"),
    (None, "serves no LoRA adapters"),
])
def test_an_unknown_adapter_id_is_refused_with_what_is_served(tmp_path, adapters, offered):
    # TGI would run it on the base model; a request for an adapter must not silently get the base instead.
    with pytest.raises(APIError) as caught:
        model_of("no-such-adapter", served(tmp_path, adapters))
    assert caught.value.status == 400 and caught.value.param == "adapter_id"
    assert "'no-such-adapter' is not a served LoRA adapter" in caught.value.message
    assert offered in caught.value.message
    assert tgi_status(caught.value) == 422  # TGI's status for a validation error
