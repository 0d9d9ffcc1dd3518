"""What the served engine returns, from its manifest, and the 400s for requests it cannot answer."""
from __future__ import annotations

import pytest

from engines import contract
from engines.manifest import Manifest
from server.engine_features import EngineFeatures, check_request
from server.errors import APIError


def manifest(target: str, **profile) -> Manifest:
    return Manifest(model_name="m", architecture="LlamaForCausalLM", target=target, max_model_len=64, profile=profile)


def request(**fields) -> contract.GenerationRequest:
    return contract.GenerationRequest(input_ids=[1, 2], request_output_len=4, **fields)


def test_the_portable_engine_answers_everything():
    features = EngineFeatures.of_manifest(manifest("portable"))
    for fields in ({}, {"return_context_logits": True, "return_generation_logits": True}, {"beam_width": 3}):
        check_request(request(**fields), features)


def test_a_trtllm_engine_answers_what_it_was_built_with():
    built = EngineFeatures.of_manifest(manifest("trtllm", max_beam_width=1, gather_context_logits=True,
                                                gather_generation_logits=False))
    check_request(request(return_context_logits=True), built)
    with pytest.raises(APIError, match="--gather-generation-logits") as caught:
        check_request(request(return_generation_logits=True), built)
    assert caught.value.status == 400 and caught.value.code == "unsupported_by_engine"
    with pytest.raises(APIError, match="--max-beam-width 3"):
        check_request(request(beam_width=3), built)
    old = EngineFeatures.of_manifest(manifest("trtllm"))  # built before the flags existed: none of them
    with pytest.raises(APIError, match="--gather-context-logits"):
        check_request(request(return_context_logits=True), old)


def test_a_beam_engine_takes_only_its_own_width():
    beams = EngineFeatures.of_manifest(manifest("trtllm", max_beam_width=4))
    check_request(request(beam_width=4), beams)
    for width in (1, 2, 5):
        with pytest.raises(APIError, match="exactly 4 beams"):
            check_request(request(beam_width=width), beams)
