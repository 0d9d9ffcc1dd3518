"""The artifact manifest: what was built, from what, and the sha256 of every file.

The gateway reads it to learn the served model's name and context length; the S3 download and the
Kubernetes init container check every file against it.
"""
from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    model_name: str
    architecture: str
    target: str  # "portable" or "trtllm"
    max_model_len: int
    tokenizer_dir: str = "tokenizer"
    tokenizer: dict = field(default_factory=dict)  # files, chat template source, bos/eos tokens
    profile: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    embedding: dict = field(default_factory=dict)  # engines.embedding.EmbeddingSpec; empty without one
    loras: dict = field(default_factory=dict)  # LoRA adapters packed in the artifact: name -> {task_id, rank, path}
    tool_versions: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        known = {name for name in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"manifest has unknown fields: {', '.join(unknown)}")
        return cls(**data)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root but the manifest itself, keyed by POSIX relative path."""
    root = Path(root)
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME and "__pycache__" not in path.parts
    }


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("ingot", "torch", "transformers", "tensorrt_llm", "tensorrt", "tritonclient", "boto3"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def manifest_bytes(manifest: Manifest) -> bytes:
    return (json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n").encode()


def parse_manifest(text: str | bytes, source: str = MANIFEST_NAME) -> Manifest:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON ({exc})") from exc
    return Manifest.from_dict(data)


def write_manifest(root: Path, manifest: Manifest) -> Manifest:
    """Hash the artifact's files into the manifest and write it at the artifact's root."""
    root = Path(root)
    manifest.files = file_hashes(root)
    manifest.tool_versions = manifest.tool_versions or tool_versions()
    manifest.created_at = manifest.created_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
    (root / MANIFEST_NAME).write_bytes(manifest_bytes(manifest))
    return manifest


def read_manifest(root: Path) -> Manifest:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; is this an artifact directory written by `ingot build`?")
    return parse_manifest(path.read_text(), str(path))


def verify_files(root: Path, manifest: Manifest) -> list[str]:
    """Problems found comparing the files on disk with the manifest; empty when they match."""
    root = Path(root)
    problems = []
    for relative, expected in sorted(manifest.files.items()):
        path = root / relative
        if not path.is_file():
            problems.append(f"{relative}: missing")
        elif sha256_file(path) != expected:
            problems.append(f"{relative}: sha256 mismatch")
    return problems
