"""LoRA adapters packed into an artifact: the portable model loads them at start, the gateway learns their
names and task ids from the manifest.

    <artifact>/model_repository/tensorrt_llm/1/loras/adapters.json   {"adapters": [{"name", "task_id", "path"}]}
    <artifact>/model_repository/tensorrt_llm/1/loras/<task_id>/      adapter_config.json, adapter_model.safetensors
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from engines.lora_format import LoraError, read_peft_adapter, read_peft_config, task_id_of
from engines.triton.lora_tasks import ADAPTERS_FILE

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# what a model id may be: the OpenAI API's own ids (ft:gpt-4o:org::id) and Hugging Face's (org/name) fit
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise LoraError(f"adapter name {name!r}: use 1-128 letters, digits and . _ : / @ + - "
                        "(starting with a letter or digit)")
    return name


def pack_adapters(adapters: dict[str, Path], loras_dir: Path) -> dict[str, dict]:
    """Copy each adapter's PEFT files under `loras_dir` and index them; returns the manifest's `loras`."""
    entries, packed = [], {}
    for name, source in adapters.items():
        check_name(name)
        source = Path(source)
        read_peft_adapter(source)  # refuse what the engine would refuse, at build time
        task_id = task_id_of(source)
        target = Path(loras_dir) / str(task_id)
        target.mkdir(parents=True, exist_ok=True)
        for file in ADAPTER_FILES:
            shutil.copy2(source / file, target / file)
        entries.append({"name": name, "task_id": task_id, "path": str(task_id)})
        packed[name] = {"task_id": task_id, "rank": read_peft_config(source)["r"],
                        "path": f"model_repository/tensorrt_llm/1/loras/{task_id}"}
    if entries:
        (Path(loras_dir) / ADAPTERS_FILE).write_text(json.dumps({"adapters": entries}, indent=2) + "\n")
    return packed


def fetch_adapter(source: str, cache_dir: Path, endpoint_url: str | None = None) -> Path:
    """A local PEFT folder for `source`: itself, or an s3:// prefix downloaded under `cache_dir`."""
    from engines import artifacts

    if not artifacts.is_s3_url(source):
        return Path(source)
    import hashlib

    local = Path(cache_dir) / hashlib.sha256(source.encode()).hexdigest()[:16]
    artifacts.download_prefix(source, local, client=artifacts.s3_client(endpoint_url))
    return local


def lora_overlay(artifact: Path, out: Path, adapters: dict[str, Path], max_loras: int, max_lora_rank: int,
                 extra_parameters: dict[str, str] | None = None) -> Path:
    """An artifact serving `adapters` on top of a portable one, without touching it: `out` links every file of
    `artifact` but the `tensorrt_llm` model's config.pbtxt (rewritten with max_loras / max_lora_rank) and its
    `loras/` folder (the artifact's own adapters plus `adapters`), and a manifest listing them all."""
    from google.protobuf import text_format

    from engines.manifest import manifest_bytes, read_manifest
    from engines.repository import ArtifactPaths, parse_config_pbtxt

    artifact, out = Path(artifact).resolve(), Path(out)
    manifest = read_manifest(artifact)
    if manifest.target != "portable":
        raise ValueError(f"{artifact}: adapters given with --lora need a portable artifact (this one is "
                         f"{manifest.target}: build its engine with --max-loras and send adapters at run time)")
    clashing = sorted(set(adapters) & set(manifest.loras))
    if clashing:
        raise ValueError(f"--lora {clashing}: the artifact already has adapters of these names")
    shutil.rmtree(out, ignore_errors=True)
    source, target = ArtifactPaths(artifact), ArtifactPaths(out)
    _link_tree(artifact, out, skip={source.model_dir, source.manifest})
    config = parse_config_pbtxt((source.model_dir / "config.pbtxt").read_text())
    current = {key: value.string_value for key, value in config.parameters.items()}
    config.parameters["max_loras"].string_value = str(max(max_loras, int(current.get("max_loras", 0))))
    config.parameters["max_lora_rank"].string_value = str(max(max_lora_rank, int(current.get("max_lora_rank", 0))))
    config.parameters["lora_dir"].string_value = "loras"
    for key, value in (extra_parameters or {}).items():  # e.g. lora_cache_host_memory_bytes
        config.parameters[key].string_value = str(value)
    _link_tree(source.model_dir, target.model_dir, skip={source.model_dir / "config.pbtxt",
                                                         source.model_dir / "1" / "loras"})
    (target.model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    loras_dir = target.model_dir / "1" / "loras"
    loras_dir.mkdir(parents=True, exist_ok=True)
    owned = {name: artifact / entry["path"] for name, entry in manifest.loras.items()}
    manifest.loras = pack_adapters({**owned, **adapters}, loras_dir)
    (out / "manifest.json").write_bytes(manifest_bytes(manifest))
    return out


def _link_tree(source: Path, target: Path, skip: set[Path]) -> None:
    """`target` mirrors `source` with symlinks to its entries, descending only into folders that hold a skipped path."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        if entry in skip:
            continue
        if any(entry in path.parents for path in skip):
            _link_tree(entry, target / entry.name, skip)
        else:
            (target / entry.name).symlink_to(entry)
