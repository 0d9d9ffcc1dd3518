"""TensorRT-LLM's LoRA cache semantics over the portable engine's adapters.

A request names its adapter by `lora_task_id`. The first request of an id carries the adapter as
`lora_weights` + `lora_config` (engines/lora_format.py); the model keeps it in a host cache bounded by
`lora_cache_host_memory_bytes` (least recently used adapters leave first) and later requests send only
the id. An id that is not cached fails with TensorRT-LLM's own message, so a gateway resends the weights
the same way for both engines. Adapters shipped in the model repository (`loras/adapters.json`) are
loaded at start and never evicted.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

from engines.lora_format import LoraError, from_trtllm

DEFAULT_HOST_CACHE_BYTES = 1 << 30  # TensorRT-LLM's default lora_cache_host_memory_bytes
ADAPTERS_FILE = "adapters.json"


def not_cached_message(task_id: int) -> str:
    """TensorRT-LLM's text (batch_manager/peftCacheManager.cpp), which clients match on to resend weights."""
    return f"LoRA task {task_id} not found in cache. Please send LoRA weights with request"


def adapter_name(task_id: int) -> str:
    return f"task-{task_id}"


class LoraTasks:
    def __init__(self, engine, host_cache_bytes: int = DEFAULT_HOST_CACHE_BYTES):
        self.engine = engine
        self.host_cache_bytes = host_cache_bytes
        self.cached: OrderedDict[int, int] = OrderedDict()  # task id -> host bytes, least recently used first
        self.pinned: set[int] = set()

    def preload(self, directory: Path) -> dict[str, int]:
        """Load the repository's adapters (`adapters.json`: {"adapters": [{"name", "task_id", "path"}]});
        returns name -> task id."""
        index = Path(directory) / ADAPTERS_FILE
        if not index.is_file():
            return {}
        loaded = {}
        for entry in json.loads(index.read_text())["adapters"]:
            task_id = int(entry["task_id"])
            self.engine.add_lora(adapter_name(task_id), Path(directory) / entry["path"])
            self.pinned.add(task_id)
            loaded[entry["name"]] = task_id
        return loaded

    def resolve(self, task_id: int | None, weights, config) -> str | None:
        """The engine's adapter name for a request's LoRA inputs (None: the base model)."""
        if task_id is None:
            if weights is not None or config is not None:
                raise LoraError("lora_task_id must be set for LoRA inference")
            return None
        if self.engine.loras is None:
            raise LoraError("this model serves no LoRA adapters (max_loras is 0)")
        if (weights is None) != (config is None):
            raise LoraError("Request for LoRA inference must have both lora_weights and lora_config")
        if task_id in self.pinned:
            return adapter_name(task_id)
        if weights is not None and task_id not in self.cached:
            self._put(task_id, weights, config)
        if task_id not in self.cached:
            raise LoraError(not_cached_message(task_id))
        self.cached.move_to_end(task_id)
        return adapter_name(task_id)

    def _put(self, task_id: int, weights, config) -> None:
        loras = self.engine.loras
        adapter = from_trtllm(weights, config, loras.shapes, loras.max_rank)
        if adapter.nbytes > self.host_cache_bytes:
            raise LoraError(f"adapter of task {task_id} needs {adapter.nbytes} bytes, more than the whole LoRA "
                            f"host cache (lora_cache_host_memory_bytes={self.host_cache_bytes})")
        while self.cached and sum(self.cached.values()) + adapter.nbytes > self.host_cache_bytes:
            evicted, _ = self.cached.popitem(last=False)
            self.engine.remove_lora(adapter_name(evicted))  # requests holding it finish with it
        self.engine.add_lora_weights(adapter_name(task_id), adapter)
        self.cached[task_id] = adapter.nbytes
