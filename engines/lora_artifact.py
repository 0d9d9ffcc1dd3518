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
