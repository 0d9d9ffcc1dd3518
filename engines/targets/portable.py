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
    loras: dict[str, Path] | None = None,
) -> Manifest:
    """Write the artifact (model repository, tokenizer, manifest) and return its manifest.

    `profile`, `plan` and `tokenizer` (from `ingot build`) are recorded in the manifest as they are;
    `loras` (name -> PEFT folder) are packed beside the weights and listed in the manifest.
    """
    checkpoint_dir, artifact_dir = Path(checkpoint_dir), Path(artifact_dir)
    settings = settings or PortableSettings()
    config = json.loads((checkpoint_dir / "config.json").read_text())
    packed = write_portable_repository(checkpoint_dir, artifact_dir, settings, loras)
    # The gateway reads the served context from the manifest: the engine's, capped to what its KV cache holds.
    manifest = Manifest(
        model_name=model_name or checkpoint_dir.name,
        architecture=config["architectures"][0],
        target="portable",
        max_model_len=served_context(config, settings),
        source={"checkpoint": str(checkpoint_dir)},
        plan={"engine_parameters": settings.parameters(), **(plan or {})},
        profile=profile or {},
        tokenizer=tokenizer or {},
        loras=packed,
    )
    return write_manifest(artifact_dir, manifest)


def served_context(config: dict, settings: PortableSettings) -> int:
    """The context the engine will serve with these settings (engines/portable/kv_budget.py). "auto" device and
    dtype resolve here as on the machine that builds: for a CPU build served on a GPU, a conservative number."""
    from engines.portable.config import ModelConfig
    from engines.portable.kv_budget import planned_context_length
    from engines.portable.loader import torch_dtype
    from engines.triton.engine_settings import engine_config_from_parameters

    engine = engine_config_from_parameters(settings.parameters())
    return planned_context_length(ModelConfig.from_dict(config), engine, torch_dtype(engine.dtype))
