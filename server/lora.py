"""LoRA adapters served by name (vLLM's convention: a request's `model` picks the adapter).

The gateway knows each adapter's name and TensorRT-LLM task id: those packed in the artifact (the manifest's
`loras`, loaded by the engine at start) and those loaded by `--lora NAME=PATH` or the admin routes (sent to the
engine as `lora_weights` / `lora_config` with the first request that uses them). `LoraEngineClient` wraps the
Triton client: a request for an adapter carries its task id, with the weights while this gateway has not seen
the engine accept them, and again once if the engine answers that the task is not in its cache (TensorRT-LLM's
LoRA cache evicts; a restarted engine starts empty). Both engines behave the same way.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from engines import contract
from engines.lora_format import LoraError, read_peft_adapter, task_id_of, to_trtllm
from server.errors import APIError
from server.triton_client import EngineFailed, EngineRejected

log = logging.getLogger("ingot.lora")
NOT_CACHED = "not found in cache"  # TensorRT-LLM's PeftTaskNotCachedException text, also the portable model's


@dataclass
class Adapter:
    name: str
    task_id: int
    path: Path
    created: int = field(default_factory=lambda: int(time.time()))
    engine_has_it: bool = False  # the engine accepted it (packed in the artifact, or sent once)
    _tensors: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def tensors(self) -> tuple[np.ndarray, np.ndarray]:
        """lora_weights and lora_config, converted once from the PEFT folder."""
        if self._tensors is None:
            self._tensors = to_trtllm(read_peft_adapter(self.path))
        return self._tensors


def parse_lora_modules(values) -> dict[str, str]:
    """`NAME=PATH` items (flags, or INGOT_LORA_MODULES split on commas) as an ordered mapping."""
    modules = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"--lora {value!r}: expected NAME=PATH (a PEFT adapter folder or s3:// prefix)")
        if name.strip() in modules:
            raise ValueError(f"--lora: the adapter name {name.strip()!r} is given twice")
        modules[name.strip()] = path.strip()
    return modules


class AdapterRegistry:
    """Adapters by name; thread-safe (the admin routes convert adapters in a worker thread)."""

    def __init__(self, base_model: str):
        self.base_model = base_model
        self._adapters: dict[str, Adapter] = {}
        self._lock = threading.Lock()

    def __contains__(self, name: str) -> bool:
        return name in self._adapters

    def list(self) -> list[Adapter]:
        return list(self._adapters.values())

    def get(self, name: str) -> Adapter | None:
        return self._adapters.get(name)

    def add_packed(self, artifact_dir: Path, loras: dict[str, dict]) -> None:
        """The manifest's adapters: the engine loaded them at start."""
        for name, entry in loras.items():
            self._put(Adapter(name, int(entry["task_id"]), Path(artifact_dir) / entry["path"], engine_has_it=True))

    def load(self, name: str, path: str | Path) -> Adapter:
        """Read and convert a PEFT folder (slow: call it off the event loop) and register it under `name`."""
        from engines.lora_artifact import check_name

        check_name(name)
        if name == self.base_model or name in self._adapters:
            raise LoraError(f"The lora adapter '{name}' has already been loaded.")
        path = Path(path)
        adapter = Adapter(name, task_id_of(path), path)
        adapter.tensors()  # refuse a bad adapter now, not at its first request
        self._put(adapter)
        return adapter

    def unload(self, name: str) -> None:
        with self._lock:
            if self._adapters.pop(name, None) is None:
                raise KeyError(name)

    def _put(self, adapter: Adapter) -> None:
        with self._lock:
            if adapter.name in self._adapters:
                raise LoraError(f"The lora adapter '{adapter.name}' has already been loaded.")
            self._adapters[adapter.name] = adapter


def _not_cached(exc: Exception) -> bool:
    return isinstance(exc, (EngineRejected, EngineFailed)) and NOT_CACHED in str(exc)


class LoraEngineClient:
    """The Triton client with adapters: requests whose `model` names an adapter carry its task id."""

    def __init__(self, engine, adapters: AdapterRegistry):
        self.engine, self.adapters = engine, adapters

    def __getattr__(self, name):  # is_ready, close, url, ...: the wrapped client's
        return getattr(self.engine, name)

    def generate(self, request: contract.GenerationRequest, request_id: str = "",
                 deadline: float | None = None) -> AsyncIterator[contract.GenerationChunk]:
        """The engine's stream itself for the base model (nothing added per token), else the adapter's."""
        name = request.model
        if name is None or name == self.adapters.base_model or name not in self.adapters:
            return self.engine.generate(request, request_id, deadline)
        return self._generate_adapter(name, request, request_id, deadline)

    async def _generate_adapter(self, name: str, request: contract.GenerationRequest, request_id: str,
                                deadline: float | None) -> AsyncIterator[contract.GenerationChunk]:
        adapter = self.adapters.get(name)
        if adapter is None:  # unloaded since the route checked the name
            raise APIError(404, f"The model '{name}' does not exist.", "invalid_request_error", "model",
                           "model_not_found")
        request = replace(request, lora_task_id=adapter.task_id)
        send_weights = not adapter.engine_has_it
        stream, first = await self._first(adapter, request, request_id, deadline, send_weights)
        try:
            adapter.engine_has_it = True
            yield first
            while not first.final:
                first = await stream.__anext__()
                yield first
        finally:
            await stream.aclose()

    async def _first(self, adapter: Adapter, request, request_id: str, deadline: float | None, send_weights: bool):
        """The stream and its first chunk; resends the weights once when the engine has lost the adapter."""
        for attempt in (0, 1):
            if send_weights:
                weights, config = await asyncio.to_thread(adapter.tensors)
                request = replace(request, lora_weights=weights, lora_config=config)
            stream = self.engine.generate(request, request_id, deadline)
            try:
                return stream, await stream.__anext__()
            except Exception as exc:
                await stream.aclose()
                if attempt or send_weights or not _not_cached(exc):
                    raise
                log.info("the engine lost LoRA task %s (%s); sending its weights again", adapter.task_id,
                         adapter.name)
                send_weights = True
        raise AssertionError("unreachable")


def load_adapters(settings, base_model: str) -> AdapterRegistry:
    """The artifact's adapters and those of --lora / INGOT_LORA_MODULES, read and converted at start."""
    import tempfile

    from engines.lora_artifact import fetch_adapter
    from engines.manifest import read_manifest

    registry = AdapterRegistry(base_model)
    registry.add_packed(settings.artifact_dir, read_manifest(settings.artifact_dir).loras)
    for name, source in settings.lora_modules:
        if name in registry:
            continue  # packed into the artifact by `ingot serve`
        registry.load(name, fetch_adapter(source, Path(tempfile.gettempdir()) / "ingot-loras"))
    return registry
