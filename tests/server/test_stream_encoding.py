"""The per-token fast paths give exactly what the general ones give: chunk JSON and gRPC response decoding."""
from __future__ import annotations

import random

import numpy as np
import pytest
from tritonclient.grpc import InferResult, service_pb2

from engines import contract
from server import sse
from server.protocol import ChatChunkChoice, ChatCompletionChunk, Completion, CompletionChoice, DeltaMessage
from server.routes.chat import NO_ROLE
from server.triton_client import RESPONSE_TENSORS, chunk_of, fast_path, response_tensors, slow_chunk_of

TEXTS = ["plain", "", " leading space", 'quote " and backslash \\', "tab\tnew\nline\rcr\bbs\fff", "\x00\x01\x1f\x7f",
         "你好，世界！", "emoji 😀🚀", "\u2028\u2029 separators", "</script>&<>'", "\ufffd replacement"]


def random_text(rng: random.Random) -> str:
    alphabet = [chr(c) for c in range(0, 0x80)] + list("éü你好😀\u2028\ufffd")
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))


@pytest.mark.parametrize("index", [0, 3])
@pytest.mark.parametrize("text", TEXTS + [random_text(random.Random(seed)) for seed in range(50)])
def test_text_events_equal_the_pydantic_rendering(text, index):
    def completion(piece: str) -> Completion:
        return Completion(id="cmpl-1", model="m/ödel", created=7, system_fingerprint="fp_1",
                          choices=[CompletionChoice(index=index, text=piece)])

    assert sse.TextEvents(completion(sse.TEXT_MARK).model_dump_json())(text) == sse.event(completion(text))

    def chat(content: str) -> str:
        return ChatCompletionChunk(id="c", model="m", created=7, system_fingerprint="fp_1",
                                   choices=[ChatChunkChoice(index=index, delta=DeltaMessage(content=content))]
                                   ).model_dump_json(exclude=NO_ROLE)

    assert sse.TextEvents(chat(sse.TEXT_MARK))(text) == f"data: {chat(text)}\n\n".encode()
    assert b'"role"' not in sse.TextEvents(chat(sse.TEXT_MARK))(text)


def test_text_events_need_the_marker_once():
    with pytest.raises(ValueError):
        sse.TextEvents('{"text": "no marker"}')


def infer_result(tensors: dict[str, np.ndarray], final: bool) -> InferResult:
    response = service_pb2.ModelInferResponse(model_name=contract.MODEL_NAME)
    for name, array in tensors.items():
        output = response.outputs.add(name=name, datatype=contract.OUTPUT_SPECS[name].dtype)
        output.shape.extend(array.shape)
        response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    response.parameters["triton_final_response"].bool_param = final
    return InferResult(response)


@pytest.mark.parametrize("final", [False, True])
@pytest.mark.parametrize("log_probs", [None, [-0.5, -1.25, -3.0]])
def test_chunk_decoding_equals_the_contract(final, log_probs):
    chunk = contract.GenerationChunk([5, 17, 2**31 - 1], log_probs, final)
    tensors = {name: array for name, array in contract.encode_chunk(chunk).items() if name in RESPONSE_TENSORS}
    result = infer_result(tensors, final)
    assert chunk_of(result) == contract.decode_chunk({n: result.as_numpy(n) for n in RESPONSE_TENSORS}, final)
    assert chunk_of(result) == chunk


def test_chunk_decoding_takes_beam_zero_up_to_its_sequence_length():
    ids = np.array([[[1, 2, 3, 0], [9, 9, 9, 9]]], dtype=np.int32)  # [batch, beam, tokens], beam 0 padded
    tensors = {"output_ids": ids, "sequence_length": np.array([[3, 4]], dtype=np.int32)}
    assert chunk_of(infer_result(tensors, True)) == contract.GenerationChunk([1, 2, 3], None, True)
    assert chunk_of(infer_result({}, True)) == contract.GenerationChunk([], None, True)


@pytest.mark.parametrize("fields, fast", [
    ({}, True),
    ({"return_log_probs": True}, False),  # cum_log_probs too: best_of ranks by it
    ({"beam_width": 2}, False),
    ({"return_generation_logits": True}, False),
    ({"return_context_logits": True}, False),
])
def test_the_raw_path_only_for_one_beam_of_ids_and_logprobs(fields, fast):
    request = contract.GenerationRequest(input_ids=[1, 2], request_output_len=4, **fields)
    names = response_tensors(request)
    assert fast_path(request, names) is fast
    assert fast or not set(names) <= set(RESPONSE_TENSORS) or request.beam_width > 1


def test_the_general_path_keeps_every_beam_and_its_score():
    second = contract.GenerationChunk([4, 5], [-0.5, -0.5], True, cum_log_prob=-1.0)
    best = contract.GenerationChunk([1, 2, 3], [-0.1, -0.2, -0.3], True, cum_log_prob=-0.6, beams=[second])
    tensors = contract.encode_chunk(best)
    chunk = slow_chunk_of(infer_result(tensors, True), tuple(tensors))
    assert chunk.output_ids == [1, 2, 3] and chunk.cum_log_prob == pytest.approx(-0.6)
    assert [beam.output_ids for beam in chunk.beams] == [[4, 5]]
    assert chunk.beams[0].cum_log_prob == pytest.approx(-1.0)
