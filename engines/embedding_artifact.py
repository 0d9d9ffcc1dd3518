"""Adding a sentence-embedding model to an artifact, beside its `tensorrt_llm` model.

    <artifact>/model_repository/embedding/       the Triton model (config.pbtxt + version 1 with the weights)
    <artifact>/embedding_tokenizer/               the gateway's tokenizer for /v1/embeddings
    manifest.json "embedding"                     the EmbeddingSpec the gateway serves from
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from engines import contract
from engines.embedding import EmbeddingSpec, read_embedding_spec, resolve_model_dir
from engines.manifest import read_manifest, write_manifest
from engines.repository import _quote, _tensor_block, parse_config_pbtxt

EMBEDDING_MODEL_SHIM = '''"""Triton Python-backend entry point: the sentence-embedding model."""
from engines.triton.embedding_model import TritonPythonModel  # noqa: F401
'''
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
SKIPPED = (".gitattributes", "README.md", "data_config.json")  # model cards and training notes: not served


def render_embedding_config(spec: EmbeddingSpec, max_batch_size: int = 64, max_queue_delay_us: int = 2000,
                            device: str = "auto") -> str:
    """config.pbtxt: dynamic batching waits up to `max_queue_delay_us` to gather many clients' inputs."""
    inputs = ",\n".join(_tensor_block(spec_, True) for spec_ in contract.EMBEDDING_INPUTS)
    outputs = ",\n".join(_tensor_block(spec_, False) for spec_ in contract.EMBEDDING_OUTPUTS)
    parameters = {"model_dir": "model", "device": device, "spec": json.dumps(spec.to_dict())}
    params = "\n".join(f"parameters: {{\n  key: {_quote(key)}\n  value: {{ string_value: {_quote(value)} }}\n}}"
                       for key, value in parameters.items())
    return (
        f'name: "{contract.EMBEDDING_MODEL_NAME}"\n'
        'backend: "python"\n'
        f"max_batch_size: {max_batch_size}\n\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n"
        f"{params}\n"
    )


def write_embedding_model(source: str, artifact_dir: Path, model_name: str | None = None) -> EmbeddingSpec:
    """Copy the model into the artifact's repository and tokenizer folder; returns what was written."""
    model_dir = resolve_model_dir(source)
    spec = read_embedding_spec(model_dir, model_name)
    artifact_dir = Path(artifact_dir)
    triton_dir = artifact_dir / "model_repository" / contract.EMBEDDING_MODEL_NAME
    if triton_dir.exists():
        shutil.rmtree(triton_dir)
    weights_dir = triton_dir / "1" / "model"
    shutil.copytree(model_dir, weights_dir, ignore=shutil.ignore_patterns(*SKIPPED, "__pycache__"))
    (triton_dir / "1" / "model.py").write_text(EMBEDDING_MODEL_SHIM)
    config = render_embedding_config(spec)
    parse_config_pbtxt(config)
    (triton_dir / "config.pbtxt").write_text(config)
    tokenizer_dir = artifact_dir / spec.tokenizer_dir
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, tokenizer_dir / name)
    return spec


def add_embedding_model(artifact_dir: Path, source: str, model_name: str | None = None) -> EmbeddingSpec:
    """`ingot build --embedding-model`: the model written into a built artifact, its manifest updated."""
    manifest = read_manifest(artifact_dir)
    spec = write_embedding_model(source, artifact_dir, model_name)
    manifest.embedding = spec.to_dict()
    write_manifest(artifact_dir, manifest)
    return spec
