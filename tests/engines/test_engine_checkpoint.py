"""Checkpoint validation (headers only) and the CLI's answer to bad input: a clear message, a non-zero exit."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engines.checkpoint import CheckpointError, read_safetensors_header, validate_checkpoint

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "engines" / "reference_configs"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engines.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def llama(demo_checkpoints, tmp_path) -> Path:
    return Path(shutil.copytree(demo_checkpoints["llama"], tmp_path / "llama"))


def shard(directory: Path, parts: int = 2) -> None:
    """Split model.safetensors into shards with an index, as large checkpoints are published."""
    weights = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    names = sorted(weights)
    weight_map = {}
    for i in range(parts):
        file = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = {name: weights[name] for name in names[i::parts]}
        save_file(chunk, str(directory / file))
        weight_map.update({name: file for name in chunk})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_demo_checkpoints_are_valid(demo_checkpoints):
    for kind, directory in demo_checkpoints.items():
        report = validate_checkpoint(directory)
        assert report.config.architecture == {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}[kind]
        assert report.weights_dtype == "float32"
        assert report.tokenizer.chat_template == "tokenizer_config.json"
        header = read_safetensors_header(directory / "model.safetensors")
        assert sum(1 for _ in header) == len(load_file(directory / "model.safetensors"))


def test_header_is_read_without_the_weights(tmp_path):
    # A header followed by far fewer bytes than it promises: only the header is read, so this still works.
    header = json.dumps({"w": {"dtype": "F16", "shape": [100000, 100000], "data_offsets": [0, 20_000_000_000]}})
    path = tmp_path / "huge.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header.encode())
    assert read_safetensors_header(path)["w"]["shape"] == [100000, 100000]


def test_sharded_checkpoint_with_index(llama):
    shard(llama)
    report = validate_checkpoint(llama)
    assert report.weight_files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def test_index_missing_a_weight_names_it(llama):
    shard(llama)
    index = json.loads((llama / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    (llama / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: tensor model.layers.1.mlp.up_proj.weight"
                                              r" is missing"):
        validate_checkpoint(llama)


def test_missing_shard_file(llama):
    shard(llama)
    (llama / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors: file is missing"):
        validate_checkpoint(llama)


def test_wrong_shape_names_file_tensor_and_shapes(llama):
    weights = load_file(llama / "model.safetensors")
    weights["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, 64)
    save_file(weights, str(llama / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        validate_checkpoint(llama)
    assert ("model.safetensors: tensor model.layers.0.self_attn.k_proj.weight has shape [8, 64], "
            "config.json implies [64, 64]") in str(err.value)
    result = run_cli("validate", str(llama))
    assert result.returncode == 2
    assert "model.layers.0.self_attn.k_proj.weight has shape [8, 64]" in result.stderr


def test_mixed_dtypes(llama):
    weights = load_file(llama / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"].half()
    save_file(weights, str(llama / "model.safetensors"))
    with pytest.raises(CheckpointError, match="weights mix dtypes"):
        validate_checkpoint(llama)


def test_missing_tokenizer(llama):
    (llama / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json: file is missing"):
        validate_checkpoint(llama)
    result = run_cli("build", "--checkpoint", str(llama), "--profile", "a100-40gb", "--target", "portable",
                     "--out", str(llama.parent / "out"))
    assert result.returncode == 2
    assert "tokenizer.json: file is missing" in result.stderr
    assert not (llama.parent / "out").exists()


def test_missing_chat_template(llama):
    config = json.loads((llama / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (llama / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="tokenizer_config.json: field 'chat_template' is missing"):
        validate_checkpoint(llama)


def test_unknown_architecture(llama):
    config = json.loads((llama / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (llama / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="field 'architectures' is 'GPT2LMHeadModel'; supported: "
                                              "LlamaForCausalLM, MistralForCausalLM"):
        validate_checkpoint(llama)
    result = run_cli("build", "--checkpoint", str(llama), "--profile", "h100-80gb", "--dry-run")
    assert result.returncode == 2
    assert "GPT2LMHeadModel" in result.stderr and "config.json" in result.stderr


def test_bad_config_field(llama):
    config = json.loads((llama / "config.json").read_text())
    config["num_key_value_heads"] = 3
    (llama / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="'num_key_value_heads' 3 does not divide 'num_attention_heads' 4"):
        validate_checkpoint(llama)


def test_cli_fp8_on_a100_is_refused():
    result = run_cli("build", "--checkpoint", str(REFERENCE / "llama-2-7b"), "--profile", "a100-80gb",
                     "--quantization", "fp8", "--dry-run")
    assert result.returncode == 2
    assert "FP8 needs Hopper" in result.stderr


def test_cli_model_too_big_at_any_tp(tmp_path):
    config = json.loads((REFERENCE / "llama-2-70b" / "config.json").read_text())
    config.update(hidden_size=16384, intermediate_size=53248, num_hidden_layers=126, num_attention_heads=128)
    (tmp_path / "huge").mkdir()
    (tmp_path / "huge" / "config.json").write_text(json.dumps(config))
    result = run_cli("plan", "--checkpoint", str(tmp_path / "huge"), "--profile", "a100-40gb")
    assert result.returncode == 2
    assert "does not fit profile a100-40gb" in result.stderr
    assert "tp=8 pp=1: weights" in result.stderr


def test_cli_dry_run_prints_table_and_json():
    result = run_cli("build", "--checkpoint", str(REFERENCE / "llama-2-70b"), "--profile", "a100-40gb", "--dry-run")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["chosen"]["tp_size"] == 4
    assert "Build plan: llama-2-70b on a100-40gb" in result.stderr
    assert "trtllm-build --checkpoint_dir" in result.stderr


def test_cli_beams_and_logits_flags_reach_the_plan():
    result = run_cli("plan", "--checkpoint", str(REFERENCE / "llama-2-7b"), "--profile", "a100-80gb",
                     "--max-beam-width", "4", "--gather-context-logits", "--gather-generation-logits")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert (plan["profile"]["max_beam_width"], plan["profile"]["gather_context_logits"],
            plan["profile"]["gather_generation_logits"]) == (4, True, True)
    build = plan["build_command"]
    assert build[build.index("--max_beam_width") + 1] == "4"
    assert "--gather_context_logits" in build and "--gather_generation_logits" in build
    plain = json.loads(run_cli("plan", "--checkpoint", str(REFERENCE / "llama-2-7b"), "--profile",
                               "a100-80gb").stdout)
    assert plain["profile"]["gather_context_logits"] is False and plain["profile"]["max_beam_width"] == 1


def test_cli_trtllm_target_stops_after_plan_without_tensorrt_llm(llama, tmp_path):
    result = run_cli("build", "--checkpoint", str(llama), "--profile", "a100-40gb", "--target", "trtllm",
                     "--out", str(tmp_path / "artifact"))
    assert result.returncode == 3
    assert "tensorrt_llm is not importable here" in result.stderr
    assert "convert_checkpoint.py" in result.stderr  # the plan was printed first


def test_transformers_5_config_keys(llama):
    # transformers 5 writes `dtype` and nests rope settings under `rope_parameters`
    config = json.loads((llama / "config.json").read_text())
    config.pop("torch_dtype", None)
    config.pop("rope_theta", None)
    config.update(dtype="bfloat16", rope_parameters={"rope_type": "default", "rope_theta": 100000.0})
    (llama / "config.json").write_text(json.dumps(config))
    report = validate_checkpoint(llama)
    assert report.config.rope_theta == 100000.0 and report.config.torch_dtype == "bfloat16"
    config["dtype"] = "int8"
    (llama / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="field 'dtype' is 'int8'"):
        validate_checkpoint(llama)
