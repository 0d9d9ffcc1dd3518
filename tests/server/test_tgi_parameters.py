"""TGI's parameter rules, as its router applies them, without a server."""
from __future__ import annotations

import pytest

from server.errors import APIError
from server.protocols.tgi import GenerateParameters
from server.tgi import guide_of, refuse_unsupported, samples, tgi_status


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
    ({"best_of": 2}, "best_of"),
])
def test_unsupported_parameters_are_refused_not_ignored(parameters, param):
    with pytest.raises(APIError) as caught:
        refuse_unsupported(GenerateParameters(**parameters), streaming=False)
    assert caught.value.param == param and caught.value.status == 400


def test_best_of_one_and_defaults_pass():
    refuse_unsupported(GenerateParameters(best_of=1, watermark=False, top_n_tokens=0), streaming=True)


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
