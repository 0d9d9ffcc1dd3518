"""`ingot build --embedding-model`: the embedding model lands in the artifact beside `tensorrt_llm`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engines import contract
from engines.embedding import EmbeddingModelError, EmbeddingSpec, read_embedding_spec, resolve_model_dir
from engines.manifest import read_manifest, verify_files
from engines.repository import parse_config_pbtxt

ROOT = Path(__file__).resolve().parents[2]


def _build(checkpoint: Path, out: Path, embedding_model: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engines.cli", "build", "--checkpoint", str(checkpoint), "--profile", "a100-40gb",
         "--target", "portable", "--out", str(out), "--embedding-model", embedding_model],
        cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_build_adds_the_embedding_model(demo_checkpoints, tmp_path):
    artifact = tmp_path / "artifact"
    built = _build(demo_checkpoints["llama"], artifact, "all-MiniLM-L6-v2")
    assert built.returncode == 0, built.stderr
    manifest = read_manifest(artifact)
    spec = EmbeddingSpec.from_dict(manifest.embedding)
    assert (spec.model_name, spec.dimensions, spec.max_input_tokens, spec.pooling, spec.normalize) == \
        ("all-MiniLM-L6-v2", 384, 256, "mean", True)
    assert verify_files(artifact, manifest) == []
    config = parse_config_pbtxt((artifact / "model_repository/embedding/config.pbtxt").read_text())
    assert config.name == contract.EMBEDDING_MODEL_NAME and config.max_batch_size > 0
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert [i.name for i in config.input] == ["input_ids"] and config.input[0].allow_ragged_batch
    assert (artifact / "model_repository/embedding/1/model/model.safetensors").is_file()
    assert (artifact / spec.tokenizer_dir / "tokenizer.json").is_file()


def test_build_refuses_a_folder_that_is_no_embedding_model(demo_checkpoints, tmp_path):
    built = _build(demo_checkpoints["llama"], tmp_path / "artifact", str(tmp_path))
    assert built.returncode == 2
    assert "needs config.json and tokenizer.json" in built.stderr


def _copy_with_pooling(tmp_path: Path, pooling: dict) -> Path:
    source, target = resolve_model_dir("all-MiniLM-L6-v2"), tmp_path / "model"
    (target / "1_Pooling").mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json"):
        (target / name).write_bytes((source / name).read_bytes())
    (target / "1_Pooling/config.json").write_text(json.dumps({"word_embedding_dimension": 384, **pooling}))
    return target


def test_pooling_comes_from_the_model_folder(tmp_path):
    model = _copy_with_pooling(tmp_path, {"pooling_mode_cls_token": True})
    assert read_embedding_spec(model, "m").pooling == "cls"
    (model / "1_Pooling/config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(EmbeddingModelError, match="not supported"):
        read_embedding_spec(model, "m")


def test_unknown_model_names_say_what_is_bundled():
    with pytest.raises(EmbeddingModelError, match="all-minilm-l6-v2"):
        resolve_model_dir("no-such-model")
