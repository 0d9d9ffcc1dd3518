"""Guided decoding in the Triton model configs: the contract's inputs, per tensorrtllm_backend release."""
from __future__ import annotations

import numpy as np
from tritonclient.grpc import model_config_pb2

from engines import contract
from engines.repository import TrtllmSettings, parse_config_pbtxt, render_config_pbtxt, supports_guided_decoding


def _inputs(config_text: str) -> dict:
    return {tensor.name: tensor for tensor in parse_config_pbtxt(config_text).input}


def test_guided_inputs_are_those_of_tensorrtllm_backend_0_19():
    assert supports_guided_decoding("0.19.0") and supports_guided_decoding("1.0.0")
    assert not supports_guided_decoding("0.12.0") and not supports_guided_decoding("0.18.2")
    settings = TrtllmSettings(trtllm_version="0.19.0")
    text = render_config_pbtxt("tensorrtllm", settings.parameters(), trtllm_version="0.19.0")
    inputs = _inputs(text)
    for name in ("guided_decoding_guide_type", "guided_decoding_guide"):
        assert inputs[name].data_type == model_config_pb2.TYPE_STRING and list(inputs[name].dims) == [1]
        assert inputs[name].optional and inputs[name].allow_ragged_batch
    parameters = {key: value.string_value for key, value in parse_config_pbtxt(text).parameters.items()}
    assert parameters["guided_decoding_backend"] == "xgrammar"
    assert parameters["xgrammar_tokenizer_info_path"].endswith("xgrammar_tokenizer_info.json")


def test_the_portable_model_declares_the_guided_inputs():
    inputs = _inputs(render_config_pbtxt("python", {}))
    assert {"guided_decoding_guide_type", "guided_decoding_guide"} <= set(inputs)


def test_guides_round_trip_through_the_contract():
    schema = '{"type": "object", "properties": {"città": {"type": "string"}}}'
    request = contract.GenerationRequest(input_ids=[1, 2], request_output_len=4, guide_type="json_schema",
                                         guide=schema)
    tensors = contract.encode_request(request)
    assert tensors["guided_decoding_guide"].dtype == np.object_ and tensors["guided_decoding_guide"].shape == (1, 1)
    decoded = contract.decode_request(tensors)
    assert (decoded.guide_type, decoded.guide) == ("json_schema", schema)
    assert contract.decode_request(contract.encode_request(contract.GenerationRequest([1], 4))).guide_type is None
    assert contract.INPUT_SPECS["guided_decoding_guide"].wire_dtype == "BYTES"
