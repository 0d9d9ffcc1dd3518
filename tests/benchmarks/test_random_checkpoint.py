"""Random-weight checkpoints: Llama-2-7B's exact shape, a tokenizer covering every id, no end-of-sequence token."""
from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from benchmarks.random_checkpoint import hf_config, shape_config, tensor_shapes, write_checkpoint
from engines.checkpoint import validate_checkpoint
from engines.portable.config import ModelConfig


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", "cpu", "float32")


def test_llama_2_7b_shape_has_its_parameter_count():
    shapes = tensor_shapes(hf_config(shape_config("llama-2-7b"), "bfloat16"))
    assert sum(_numel(shape) for shape in shapes.values()) == 6_738_415_616
    assert shapes["model.embed_tokens.weight"] == (32000, 4096)
    assert shapes["model.layers.31.mlp.down_proj.weight"] == (4096, 11008)


def test_every_id_decodes_to_text(tiny):
    tokenizer = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == 32000
    silent = [i for i in range(32000) if not tokenizer.decode([i])]
    assert silent == [0, 1, 2]                                      # <unk>, <s>, </s>


def test_transformers_and_the_portable_engine_read_it(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)["input_ids"]
    assert tokenizer.decode(ids) == "<s>[INST] hi [/INST]"
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<s>", "</s>")
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert model.generation_config.eos_token_id is None              # answers run to max_tokens
    assert ModelConfig.from_dir(tiny).num_layers == 2
    report = validate_checkpoint(tiny)                               # what `ingot validate` checks
    assert report.weights_dtype == "float32" and report.tokenizer is not None
    index = json.loads((tiny / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensor_shapes(json.loads((tiny / "config.json").read_text())))


def _numel(shape) -> int:
    total = 1
    for size in shape:
        total *= size
    return total
