"""The contract mirrors tensorrtllm_backend's `tensorrt_llm` model and round-trips requests."""
import numpy as np
import pytest

from engines import contract
from engines.repository import PortableSettings, parse_config_pbtxt, render_config_pbtxt


def test_required_tensors_match_tensorrtllm_backend():
    specs = contract.INPUT_SPECS
    assert (specs["input_ids"].dtype, specs["input_ids"].dims, specs["input_ids"].ragged) == ("INT32", (-1,), True)
    assert specs["stop_words_list"].dims == (2, -1)
    assert specs["random_seed"].dtype == "UINT64"
    assert [s.name for s in contract.INPUTS if not s.optional] == ["input_ids", "input_lengths", "request_output_len"]
    outputs = {s.name: (s.dtype, s.dims) for s in contract.OUTPUTS}
    assert outputs["output_ids"] == ("INT32", (-1, -1))
    assert outputs["sequence_length"] == ("INT32", (-1,))
    assert outputs["generation_logits"] == ("FP32", (-1, -1, -1))


def test_request_round_trip_with_batch_dimension():
    request = contract.GenerationRequest(
        input_ids=[5, 6, 7], request_output_len=9, end_id=2, pad_id=0, temperature=0.75, top_k=40, top_p=0.875,
        random_seed=2**63 + 5, repetition_penalty=1.125, presence_penalty=0.5, frequency_penalty=-0.5,
        min_length=3, stop_words=[[11, 12], [13]], return_log_probs=True)
    tensors = contract.encode_request(request)
    assert tensors["input_ids"].shape == (1, 3)
    assert tensors["request_output_len"].shape == (1, 1)
    assert tensors["stop_words_list"].shape == (1, 2, 3)
    assert tensors["random_seed"].dtype == np.uint64
    decoded = contract.decode_request(tensors)
    assert decoded == request


def test_stop_words_layout_is_tensorrt_llm_one():
    array = contract.encode_stop_words([[11, 12], [13]])
    assert array.tolist() == [[11, 12, 13], [2, 3, -1]]
    assert contract.decode_stop_words(array) == [[11, 12], [13]]


def test_decode_request_rejects_bad_lengths_and_missing_tensors():
    with pytest.raises(ValueError, match="missing required input tensors: request_output_len"):
        contract.decode_request({"input_ids": np.array([[1]]), "input_lengths": np.array([[1]])})
    tensors = contract.encode_request(contract.GenerationRequest(input_ids=[1, 2], request_output_len=3))
    tensors["input_lengths"] = np.array([[5]], dtype=np.int32)
    with pytest.raises(ValueError, match="input_lengths=5"):
        contract.decode_request(tensors)


def test_chunk_round_trip_keeps_log_probs():
    chunk = contract.GenerationChunk(output_ids=[4, 5], log_probs=[-0.5, -1.25], final=True)
    tensors = contract.encode_chunk(chunk)
    assert tensors["output_ids"].shape == (1, 1, 2)
    assert tensors["cum_log_probs"].tolist() == [[-1.75]]
    assert contract.decode_chunk(tensors, final=True) == chunk


def test_portable_config_pbtxt_parses_with_triton_model_config():
    config = parse_config_pbtxt(render_config_pbtxt("python", PortableSettings().parameters()))
    assert config.name == "tensorrt_llm" and config.backend == "python"
    assert config.model_transaction_policy.decoupled
    assert config.max_batch_size > 0 and config.HasField("dynamic_batching")
    assert [i.name for i in config.input] == [s.name for s in contract.INPUTS]
    input_lengths = next(i for i in config.input if i.name == "input_lengths")
    assert input_lengths.HasField("reshape") and list(input_lengths.reshape.shape) == []
    assert config.parameters["enable_kv_cache_reuse"].string_value == "true"
