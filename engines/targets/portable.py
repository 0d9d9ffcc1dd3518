"""The `portable` target: pack a checkpoint for the portable engine behind Triton's Python backend."""
from __future__ import annotations

import json
from pathlib import Path

from engines.manifest import Manifest, write_manifest
from engines.repository import PortableSettings, write_portable_repository


def build_portable(
    checkpoint_dir: Path,
    artifact_dir: Path,
    settings: PortableSettings | None = None,
    model_name: str | None = None,
    profile: dict | None = None,
    plan: dict | None = None,
    tokenizer: dict | None = None,
) -> Manifest:
    """Write the artifact (model repository, tokenizer, manifest) and return its manifest.

    `profile`, `plan` and `tokenizer` (from `ingot build`) are recorded in the manifest as they are.
    """
    checkpoint_dir, artifact_dir = Path(checkpoint_dir), Path(artifact_dir)
    settings = settings or PortableSettings()
    config = json.loads((checkpoint_dir / "config.json").read_text())
    write_portable_repository(checkpoint_dir, artifact_dir, settings)
    manifest = Manifest(
        model_name=model_name or checkpoint_dir.name,
        architecture=config["architectures"][0],
        target="portable",
        max_model_len=int(config["max_position_embeddings"]),
        source={"checkpoint": str(checkpoint_dir)},
        plan={"engine_parameters": settings.parameters(), **(plan or {})},
        profile=profile or {},
        tokenizer=tokenizer or {},
    )
    return write_manifest(artifact_dir, manifest)
