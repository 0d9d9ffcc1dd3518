"""GGUF checkpoints: every supported tensor type dequantized exactly as transformers' own GGUF loader does,
q/k unpermuted, the embedded tokenizer and chat template carried over, and clear errors naming the tensor."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engines.checkpoint import CheckpointError, validate_checkpoint
from engines.gguf import convert_gguf, dequantizable_types, read_gguf
from tests.engines.gguf_files import TINY, write_llama_gguf

ROOT = Path(__file__).resolve().parents[2]
REQUIRED_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engines.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def transformers_state(gguf_path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=torch.float32)
    return model.state_dict()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """One file holding every required type, one per matrix in turn (GQA: 4 heads, 2 KV heads)."""
    directory = tmp_path_factory.mktemp("gguf-mixed")
    write_mixed(directory / "mixed.gguf")
    return directory / "mixed.gguf"


def write_mixed(path: Path) -> None:
    from tests.engines import gguf_files

    original = gguf_files.encode_tensor
    order = iter(REQUIRED_TYPES * 8)

    def round_robin(weights, _qtype, rng):
        return original(weights, next(order), rng)

    gguf_files.encode_tensor = round_robin
    try:
        write_llama_gguf(path)
    finally:
        gguf_files.encode_tensor = original


def test_the_gguf_package_dequantizes_every_required_type():
    assert set(REQUIRED_TYPES) <= dequantizable_types()


def test_every_required_type_matches_transformers_exactly(mixed, tmp_path):
    info = read_gguf(mixed)
    assert set(info.tensor_types.values()) == set(REQUIRED_TYPES)  # F32 includes the norms
    ours = load_file(str(convert_gguf(mixed, tmp_path / "hf") / "model.safetensors"))
    reference = transformers_state(mixed)
    assert sorted(ours) == sorted(reference)
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, reference[name]), f"{name} ({info.tensor_types})"


def test_f32_round_trip_undoes_llama_cpp_permutation(tmp_path):
    original = write_llama_gguf(tmp_path / "f32.gguf", "F32")
    ours = load_file(str(convert_gguf(tmp_path / "f32.gguf", tmp_path / "hf") / "model.safetensors"))
    assert sorted(ours) == sorted(original)
    for name, tensor in ours.items():
        assert torch.equal(tensor, torch.from_numpy(original[name])), name


def test_config_from_metadata(tmp_path):
    write_llama_gguf(tmp_path / "tied.gguf", "Q8_0", tied=True)
    hf = convert_gguf(tmp_path / "tied.gguf", tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == \
        (TINY["layers"], TINY["hidden"], TINY["intermediate"])
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 64)
    assert config["rope_theta"] == 50000.0 and config["rms_norm_eps"] == pytest.approx(1e-5)
    assert config["tie_word_embeddings"] is True
    assert "lm_head.weight" not in load_file(str(hf / "model.safetensors"))
    report = validate_checkpoint(hf)  # the converted directory is an ordinary, valid checkpoint
    assert report.weights_dtype == "float32" and report.config.rope_theta == 50000.0


def test_tokenizer_and_chat_template_match_transformers(mixed, tmp_path):
    from transformers import AutoTokenizer

    hf = convert_gguf(mixed, tmp_path / "hf")
    ours = AutoTokenizer.from_pretrained(str(hf))
    reference = AutoTokenizer.from_pretrained(str(mixed.parent), gguf_file=mixed.name)
    text = "the theme: 你好, café <|im_end|>"
    assert ours.encode(text) == reference.encode(text)
    assert ours.decode(ours.encode(text)) == reference.decode(reference.encode(text))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the the"}]
    rendered = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")
    assert json.loads((hf / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"


def test_unsupported_architecture_is_named(tmp_path):
    write_llama_gguf(tmp_path / "qwen.gguf", "F16", architecture="qwen2")
    with pytest.raises(CheckpointError, match="general.architecture is 'qwen2'; supported: llama"):
        read_gguf(tmp_path / "qwen.gguf")


def test_undequantizable_type_names_the_tensor(tmp_path):
    write_llama_gguf(tmp_path / "q8k.gguf", "Q8_K")
    with pytest.raises(CheckpointError) as error:
        read_gguf(tmp_path / "q8k.gguf")
    assert "tensor token_embd.weight has type Q8_K" in str(error.value)
    assert "cannot dequantize" in str(error.value)


def test_rope_frequency_tensor_is_refused(tmp_path):
    write_llama_gguf(tmp_path / "l31.gguf", "F16", extra_tensors={"rope_freqs.weight": np.ones(32, np.float32)})
    with pytest.raises(CheckpointError, match="rope_freqs.weight: per-dimension rope frequencies"):
        read_gguf(tmp_path / "l31.gguf")


def test_not_a_gguf_file(tmp_path):
    (tmp_path / "fake.gguf").write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        validate_checkpoint(tmp_path / "fake.gguf")


def test_missing_tensor_is_named(tmp_path):
    from tests.engines.gguf_files import TINY as shape
    from tests.engines.gguf_files import hf_weights

    weights = hf_weights(shape, 261, np.random.default_rng(0), tied=False)
    del weights["model.layers.1.mlp.up_proj.weight"]
    write_llama_gguf(tmp_path / "partial.gguf", "F16", weights=weights)
    with pytest.raises(CheckpointError, match="tensor for model.layers.1.mlp.up_proj.weight is missing"):
        validate_checkpoint(tmp_path / "partial.gguf")


def test_cli_validate_and_build_a_gguf(mixed, tmp_path):
    validated = run_cli("validate", str(mixed))
    assert validated.returncode == 0, validated.stderr
    assert "LlamaForCausalLM" in validated.stderr and "GGUF" in validated.stderr and "Q4_K" in validated.stderr
    artifact = tmp_path / "artifact"
    built = run_cli("build", "--checkpoint", str(mixed), "--profile", "a100-40gb", "--target", "portable",
                    "--out", str(artifact))
    assert built.returncode == 0, built.stderr
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["model_name"] == "mixed" and manifest["architecture"] == "LlamaForCausalLM"
    weights = artifact / "model_repository" / "tensorrt_llm" / "1" / "checkpoint"
    assert torch.equal(load_file(str(weights / "model.safetensors"))["model.layers.0.self_attn.k_proj.weight"],
                       transformers_state(mixed)["model.layers.0.self_attn.k_proj.weight"])
    assert (artifact / "tokenizer" / "tokenizer.json").is_file()


def test_cli_trtllm_plan_reads_the_converted_checkpoint(mixed, tmp_path):
    result = run_cli("plan", "--checkpoint", str(mixed), "--profile", "a100-40gb", "--target", "trtllm",
                     "--work-dir", str(tmp_path / "work"))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert "--model_dir" in plan["convert_command"]
    model_dir = plan["convert_command"][plan["convert_command"].index("--model_dir") + 1]
    assert model_dir == str(tmp_path / "work" / "hf_checkpoint")


def test_cli_bad_gguf_exits_2_with_the_tensor_named(tmp_path):
    write_llama_gguf(tmp_path / "q8k.gguf", "Q8_K")
    result = run_cli("validate", str(tmp_path / "q8k.gguf"))
    assert result.returncode == 2
    assert "token_embd.weight has type Q8_K" in result.stderr
