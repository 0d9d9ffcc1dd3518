"""PEFT adapters as TensorRT-LLM's lora_weights / lora_config: the layout TensorRT-LLM's own loader writes
(tensorrt_llm/lora_manager.py: per (module, layer) row, A [r, in] then B·scaling [out, r], flattened), and
read back by the portable engine."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engines.lora_format import (LoraError, ModelShapes, from_trtllm, read_peft_adapter, read_safetensors,
                                 task_id_of, to_trtllm)
from tests.lora_adapters import ALL_MODULES, make_adapter

pytest.importorskip("peft")
MODULE_IDS = {"q_proj": 1, "k_proj": 2, "v_proj": 3, "o_proj": 4, "gate_proj": 5, "down_proj": 6, "up_proj": 7}


@pytest.fixture(scope="module")
def shapes(demo_checkpoints):
    config = json.loads((demo_checkpoints["mistral"] / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    return ModelShapes.of(config["num_hidden_layers"], config["hidden_size"], heads, kv_heads,
                          config.get("head_dim") or config["hidden_size"] // heads, config["intermediate_size"])


@pytest.fixture(scope="module")
def adapter_dirs(demo_checkpoints, tmp_path_factory):
    root, base = tmp_path_factory.mktemp("lora-format"), demo_checkpoints["mistral"]  # GQA: k/v narrower than q
    return {"all": make_adapter(base, root / "all", 3, 8, 16, False, ALL_MODULES),
            "q-down-rs": make_adapter(base, root / "q-down-rs", 4, 4, 6, True, ["q_proj", "down_proj"])}


def peft_tensors(path):
    """(layer, module) -> (A, B) straight from PEFT's file."""
    pairs = {}
    for key, tensor in load_file(str(path / "adapter_model.safetensors")).items():
        parts = key.split(".")
        layer, module, which = int(parts[parts.index("layers") + 1]), parts[-3], parts[-2]
        pairs.setdefault((layer, module), {})[which] = tensor.numpy()
    return {key: (pair["lora_A"], pair["lora_B"]) for key, pair in pairs.items()}


def test_rows_follow_tensorrt_llm_layout(adapter_dirs, shapes):
    weights, config = to_trtllm(read_peft_adapter(adapter_dirs["all"], shapes))
    expected = peft_tensors(adapter_dirs["all"])
    assert weights.dtype == np.float16 and config.dtype == np.int32 and config.shape == (len(expected), 3)
    keys = sorted(expected, key=lambda key: (key[0], MODULE_IDS[key[1]]))
    assert [tuple(row) for row in config.tolist()] == [(MODULE_IDS[m], layer, 8) for layer, m in keys]
    for row, key in enumerate(keys):
        a, b = expected[key]
        flat = np.concatenate([a.reshape(-1), (b * 2.0).reshape(-1)])  # lora_alpha 16 / r 8
        np.testing.assert_array_equal(weights[row, :flat.size], flat.astype(np.float16))
        assert not weights[row, flat.size:].any()  # padded with zeros to the widest row


def test_missing_qkv_rows_are_zero_and_rslora_scaling(adapter_dirs, shapes):
    adapter = read_peft_adapter(adapter_dirs["q-down-rs"], shapes)
    weights, config = to_trtllm(adapter)
    rows = {(m, layer): index for index, (m, layer, _) in enumerate(config.tolist())}
    layers = shapes.num_layers
    assert set(rows) == {(m, layer) for m in (1, 2, 3, 6) for layer in range(layers)}
    for layer in range(layers):
        assert not weights[rows[(2, layer)]].any() and not weights[rows[(3, layer)]].any()
    a, b = peft_tensors(adapter_dirs["q-down-rs"])[(0, "down_proj")]
    np.testing.assert_allclose(adapter.weights[(0, "down_proj")][1], b * 6 / 2.0, rtol=1e-6)  # alpha / sqrt(r)
    back = from_trtllm(weights[None], config[None], shapes, max_rank=16)
    assert set(back.weights) == set(adapter.weights)  # the zero q/k/v rows are dropped
    for key, (a, b) in adapter.weights.items():
        np.testing.assert_allclose(back.weights[key][0], a, rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(back.weights[key][1], b, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("edit, message", [
    (lambda w, c: (w, np.vstack([c, [[9, 0, 4]]])), "same size"),
    (lambda w, c: (w, c.copy() * [1, 0, 1] + [[0, 99, 0]]), "layerId"),
    (lambda w, c: (w, c * [[0, 1, 1]] + [[17, 0, 0]]), "lora module id 17"),
    (lambda w, c: (w, c * [[1, 1, 0]] + [[0, 0, 32]]), "adapter size 32"),
    (lambda w, c: (w[:, :10], c), "too few values"),
])
def test_bad_tensors_are_refused_with_the_reason(adapter_dirs, shapes, edit, message):
    weights, config = to_trtllm(read_peft_adapter(adapter_dirs["all"], shapes))
    weights, config = edit(weights, config)
    with pytest.raises(LoraError, match=message):
        from_trtllm(weights, config.astype(np.int32), shapes, max_rank=16)


def test_bfloat16_adapters_and_shape_checks(adapter_dirs, shapes, tmp_path):
    source = adapter_dirs["all"]
    bf16 = tmp_path / "bf16"
    bf16.mkdir()
    (bf16 / "adapter_config.json").write_text((source / "adapter_config.json").read_text())
    tensors = load_file(str(source / "adapter_model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(bf16 / "adapter_model.safetensors"))
    read = read_safetensors(bf16 / "adapter_model.safetensors")
    for key, tensor in tensors.items():
        np.testing.assert_array_equal(read[key], tensor.to(torch.bfloat16).float().numpy())
    wrong = ModelShapes(shapes.num_layers, {**shapes.features, "k_proj": (1, 1)})
    with pytest.raises(LoraError, match="k_proj.*do not fit the model's 1 -> 1 projection"):
        read_peft_adapter(source, wrong)
    with pytest.raises(LoraError, match="rank 8 is above the engine's max_lora_rank 4"):
        read_peft_adapter(source, shapes, max_rank=4)


def test_task_ids_follow_the_files(adapter_dirs):
    first, second = task_id_of(adapter_dirs["all"]), task_id_of(adapter_dirs["q-down-rs"])
    assert first == task_id_of(adapter_dirs["all"]) and first != second and 0 <= first < 2**63
