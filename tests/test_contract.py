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
    decoded = contract.decode_chunk(tensors, final=True)
    assert decoded == contract.GenerationChunk(output_ids=[4, 5], log_probs=[-0.5, -1.25], final=True,
                                               cum_log_prob=-1.75)


def test_portable_config_pbtxt_parses_with_triton_model_config():
    config = parse_config_pbtxt(render_config_pbtxt("python", PortableSettings().parameters()))
    assert config.name == "tensorrt_llm" and config.backend == "python"
    assert config.model_transaction_policy.decoupled
    assert config.max_batch_size > 0 and config.HasField("dynamic_batching")
    assert [i.name for i in config.input] == [s.name for s in contract.INPUTS]
    input_lengths = next(i for i in config.input if i.name == "input_lengths")
    assert input_lengths.HasField("reshape") and list(input_lengths.reshape.shape) == []
    assert config.parameters["enable_kv_cache_reuse"].string_value == "true"


def test_beams_travel_as_one_batch_of_beams():
    best = contract.GenerationChunk([4, 5, 6], [-0.1, -0.2, -0.3], True, cum_log_prob=-0.6)
    best.beams = [contract.GenerationChunk([7], [-0.9], True, cum_log_prob=-0.9)]
    tensors = contract.encode_chunk(best)
    assert tensors["output_ids"].shape == (1, 2, 3)  # [batch, beam, tokens], as tensorrtllm_backend
    assert tensors["sequence_length"].tolist() == [[3, 1]]
    decoded = contract.decode_chunk(tensors, final=True)
    assert decoded.output_ids == [4, 5, 6] and decoded.beams[0].output_ids == [7]
    assert decoded.beams[0].cum_log_prob == pytest.approx(-0.9)
    assert decoded.log_probs == pytest.approx([-0.1, -0.2, -0.3])


def test_logits_rows_travel_with_their_batch_dimensions():
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    chunk = contract.GenerationChunk([1], generation_logits=rows[:1], context_logits=rows)
    tensors = contract.encode_chunk(chunk)
    assert tensors["context_logits"].shape == (1, 3, 4)
    assert tensors["generation_logits"].shape == (1, 1, 1, 4)
    decoded = contract.decode_chunk(tensors, final=False)
    assert decoded.context_logits.tolist() == rows.tolist()
    assert decoded.generation_logits.tolist() == rows[:1].tolist()


def test_logit_bias_travels_as_the_dense_embedding_bias():
    request = contract.GenerationRequest([1, 2], 4, logit_bias={3: 5.0, 0: -100.0}, vocab_size=6, beam_width=2,
                                         len_penalty=0.5, early_stopping=True, return_context_logits=True,
                                         return_generation_logits=True)
    tensors = contract.encode_request(request)
    assert tensors["embedding_bias"].tolist() == [[-100.0, 0.0, 0.0, 5.0, 0.0, 0.0]]
    decoded = contract.decode_request(tensors)
    assert decoded.logit_bias == {0: -100.0, 3: 5.0}
    assert (decoded.beam_width, decoded.len_penalty, decoded.early_stopping) == (2, 0.5, True)
    assert decoded.return_context_logits and decoded.return_generation_logits
    with pytest.raises(ValueError, match="out of the vocabulary"):
        contract.encode_request(contract.GenerationRequest([1], 1, logit_bias={6: 1.0}, vocab_size=6))


def test_choice_seeds_keep_the_first_and_differ():
    seeds = [contract.choice_seed(2**64 - 1, index) for index in range(4)]
    assert seeds[0] == 2**64 - 1 and len(set(seeds)) == 4 and all(0 <= s < 2**64 for s in seeds)
