"""The sender's direct build of plain responses gives exactly the contract's arrays, and only the outputs
the client asked for."""
from __future__ import annotations

import numpy as np
import pytest

from engines import contract
from engines.triton.response_tensors import chunk_tensors, plain_tensors, wanted

ALL = frozenset(spec.name for spec in contract.OUTPUTS)


def same(left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        assert left[name].shape == right[name].shape, name
        np.testing.assert_array_equal(left[name], right[name])


@pytest.mark.parametrize("ids, log_probs, cum", [
    ([5], None, None),
    ([5, 9, 11], None, -1.25),  # the engine reports every choice's cumulative logprob
    ([5, 9, 11], [-0.5, -0.25, -2.0], None),
    ([5, 9], [-0.5, -0.25], -3.5),
    ([], None, -0.75),  # the final response of a request that stopped on its end token
    ([], [], None),
])
@pytest.mark.parametrize("outputs", [None, frozenset({"output_ids", "sequence_length"}), ALL,
                                     frozenset({"output_ids", "sequence_length", "output_log_probs"})])
def test_plain_tensors_are_the_contract_encoding(ids, log_probs, cum, outputs):
    chunk = contract.GenerationChunk(ids, log_probs, final=False, cum_log_prob=cum)
    expected = contract.encode_chunk(chunk)
    if outputs is not None:
        expected = {name: array for name, array in expected.items() if name in outputs}
    same(plain_tensors(ids, log_probs, cum, outputs), expected)
    same(chunk_tensors(chunk, outputs), expected)


def test_the_gateway_plain_request_gets_two_tensors_and_they_decode_back():
    outputs = wanted(["output_ids", "sequence_length"])
    tensors = plain_tensors([7, 8, 9], None, -4.0, outputs)
    assert sorted(tensors) == ["output_ids", "sequence_length"]
    assert contract.decode_chunk(tensors, final=True).output_ids == [7, 8, 9]


def test_no_named_outputs_means_every_output():
    assert wanted([]) is None and wanted(()) is None
    assert wanted(["output_ids"]) == frozenset({"output_ids"})
