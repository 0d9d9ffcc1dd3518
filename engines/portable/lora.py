"""LoRA adapters over the portable engine's projections: tokens of many adapters and of the base in one step.

Adapters come in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`) and stay in host
memory; up to `max_loras` of them sit in device slots at once, the least recently used one making room.

On the device, every layer's fused projection (qkv, o, gate_up, down) has one down matrix
A [S·k·R, in] and one up matrix B [out, S·k·R] holding all S slots (k sub-projections: q, k, v for qkv,
gate and up for gate_up; ranks padded to R with zeros; B pre-multiplied by the adapter's scaling). A
token's correction is (x Aᵀ ⊙ m) Bᵀ, where the mask m keeps only the columns of the token's own slot
(none for the base, slot -1). Shapes do not depend on which adapters a step holds, so one code path
serves prefill, decode and captured CUDA graphs. The price is reading every slot's A and B per step:
S·k·R·(in + out) weights per projection, about 10% of a Llama-2-7B layer at S = 8, R = 16.
"""
from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.lora_format import AdapterWeights, LoraError, ModelShapes, read_peft_adapter
from engines.portable.config import ModelConfig

__all__ = ["LoraAdapter", "LoraError", "LoraRegistry", "LoraSlots", "load_peft_adapter", "model_shapes"]

# PEFT's module names, by the fused projection that holds them, in the order of its output rows
PROJECTIONS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gate_up": ("gate_proj", "up_proj"),
               "down": ("down_proj",)}


def model_shapes(config: ModelConfig) -> ModelShapes:
    return ModelShapes.of(config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads,
                          config.head_dim, config.intermediate_size)


def _shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) features of each adapted module."""
    return model_shapes(config).features


@dataclass(frozen=True)
class LoraAdapter:
    """One adapter in host memory: per (layer, module) its A [r, in] and B [out, r], B already scaled."""

    name: str
    rank: int
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    uid: int  # distinguishes two adapters registered under one name, for the prefix cache
    nbytes: int = 0  # host memory held

    @property
    def cache_salt(self) -> bytes:
        """Seeds the prefix cache's block hashes: KV computed under one adapter is never reused by another."""
        return hashlib.sha256(f"lora:{self.uid}:{self.name}".encode()).digest()


_UIDS = itertools.count(1)


def adapter_from_weights(name: str, adapter: AdapterWeights) -> LoraAdapter:
    """Host-side torch copies of checked weights (engines.lora_format)."""
    weights = {key: (torch.from_numpy(a).float().contiguous(), torch.from_numpy(b).float().contiguous())
               for key, (a, b) in adapter.weights.items()}
    return LoraAdapter(name, adapter.rank, weights, next(_UIDS), adapter.nbytes)


def load_peft_adapter(name: str, path: str | Path, model: ModelConfig, max_rank: int) -> LoraAdapter:
    """Read a PEFT adapter folder and check it against the model; weights stay on the host in fp32."""
    return adapter_from_weights(name, read_peft_adapter(path, model_shapes(model), max_rank))


class LoraSlots:
    """The device side: `max_loras` slots of every layer's A and B, and which adapter holds which slot."""

    def __init__(self, model: ModelConfig, max_loras: int, max_rank: int, device: torch.device,
                 dtype: torch.dtype, kernel: str = "torch"):
        self.max_loras, self.max_rank = max_loras, max_rank
        self.uses_kernel = _use_kernel(kernel, device, max_rank)
        shapes = _shapes(model)
        self.layers: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []
        for _ in range(model.num_layers):
            layer = {}
            for projection, modules in PROJECTIONS.items():
                features_in = shapes[modules[0]][0]
                features_out = sum(shapes[m][1] for m in modules)
                columns = max_loras * len(modules) * max_rank
                layer[projection] = (torch.zeros(columns, features_in, device=device, dtype=dtype),
                                     torch.zeros(features_out, columns, device=device, dtype=dtype))
            self.layers.append(layer)
        self.column_slot = {projection: torch.arange(max_loras, device=device).repeat_interleave(
            len(modules) * max_rank) for projection, modules in PROJECTIONS.items()}
        self.row_offsets = {projection: list(itertools.accumulate([shapes[m][1] for m in modules], initial=0))
                             for projection, modules in PROJECTIONS.items()}
        self.holder: OrderedDict[int, LoraAdapter] = OrderedDict()  # slot -> adapter, least recently used first

    def slot_of(self, adapter: LoraAdapter) -> int | None:
        for slot, held in self.holder.items():
            if held is adapter:
                return slot
        return None

    def acquire(self, adapter: LoraAdapter, in_use: set[int]) -> int:
        """The adapter's slot, loading it into a free slot or the least recently used one outside `in_use`."""
        slot = self.slot_of(adapter)
        if slot is None:
            free = [s for s in range(self.max_loras) if s not in self.holder]
            victims = free or [s for s in self.holder if s not in in_use]
            if not victims:
                raise RuntimeError("every LoRA slot is used by this step; the scheduler admits at most max_loras")
            slot = victims[0]
            self.holder.pop(slot, None)
            self._write(slot, adapter)
        self.holder[slot] = adapter
        self.holder.move_to_end(slot)
        return slot

    def _write(self, slot: int, adapter: LoraAdapter) -> None:
        rank = self.max_rank
        for index, layer in enumerate(self.layers):
            for projection, modules in PROJECTIONS.items():
                a_all, b_all = layer[projection]
                offsets = self.row_offsets[projection]
                for sub, module in enumerate(modules):
                    start = (slot * len(modules) + sub) * rank
                    a_all[start:start + rank].zero_()
                    b_all[offsets[sub]:offsets[sub + 1], start:start + rank].zero_()
                    pair = adapter.weights.get((index, module))
                    if pair is None:
                        continue
                    a, b = pair  # ranks may differ per module (adapters sent as TensorRT-LLM tensors)
                    a_all[start:start + a.shape[0]].copy_(a)
                    b_all[offsets[sub]:offsets[sub + 1], start:start + a.shape[0]].copy_(b)

    def add_delta(self, layer: int, projection: str, x: torch.Tensor, out: torch.Tensor,
                  token_slots: torch.Tensor) -> torch.Tensor:
        """`out` (the projection of x) plus each token's correction: in place by the Triton kernels on CUDA."""
        if not self.uses_kernel or out.stride(-1) != 1:
            return out + self.delta(layer, projection, x, token_slots)
        from engines.portable.lora_kernels import add_lora

        a_all, b_all = self.layers[layer][projection]
        return add_lora(out, x, a_all, b_all, token_slots, self.max_loras, len(PROJECTIONS[projection]),
                        self.max_rank, self.row_offsets[projection])

    def delta(self, layer: int, projection: str, x: torch.Tensor, token_slots: torch.Tensor) -> torch.Tensor:
        """The LoRA correction of projection `projection` of `layer` for tokens x [T, in] of slots [T]."""
        a_all, b_all = self.layers[layer][projection]
        hidden = x @ a_all.t()
        mask = (self.column_slot[projection][None, :] == token_slots[:, None]).to(hidden.dtype)
        return (hidden * mask) @ b_all.t()


def _use_kernel(kernel: str, device: torch.device, max_rank: int) -> bool:
    """Whether the Triton kernels compute the corrections; "triton" where they cannot run is an error."""
    if kernel == "torch":
        return False
    from engines.portable import kernels

    reason = kernels.unavailable_reason() if device.type == "cuda" else "the device is not CUDA"
    if reason is None and not (max_rank >= 16 and max_rank & (max_rank - 1) == 0):  # tl.dot's smallest tile
        reason = f"max_lora_rank {max_rank} is not a power of two of at least 16"
    if kernel == "triton" and reason is not None:
        raise ValueError(f"lora_kernel=triton: {reason}")
    return reason is None


class LoraRegistry:
    """Adapters by name (host memory) and their device slots."""

    def __init__(self, model: ModelConfig, max_loras: int, max_rank: int, device: torch.device,
                 dtype: torch.dtype, kernel: str = "torch"):
        self.model, self.max_rank = model, max_rank
        self.adapters: dict[str, LoraAdapter] = {}
        self.slots = LoraSlots(model, max_loras, max_rank, device, dtype, kernel)

    @property
    def max_loras(self) -> int:
        return self.slots.max_loras

    @property
    def shapes(self) -> ModelShapes:
        return model_shapes(self.model)

    def add(self, name: str, path: str | Path) -> LoraAdapter:
        if not name:
            raise LoraError("an adapter needs a name")
        return self.put(load_peft_adapter(name, path, self.model, self.max_rank))

    def add_weights(self, name: str, weights: AdapterWeights) -> LoraAdapter:
        """Register already-read weights (e.g. from TensorRT-LLM's lora_weights / lora_config tensors)."""
        if not name:
            raise LoraError("an adapter needs a name")
        return self.put(adapter_from_weights(name, weights))

    def put(self, adapter: LoraAdapter) -> LoraAdapter:
        self.adapters[adapter.name] = adapter
        return adapter

    def remove(self, name: str) -> None:
        """Forget an adapter; requests already holding it finish with it (they keep a reference)."""
        if self.adapters.pop(name, None) is None:
            raise LoraError(f"no adapter named {name!r} is loaded")

    def get(self, name: str) -> LoraAdapter:
        adapter = self.adapters.get(name)
        if adapter is None:
            loaded = ", ".join(sorted(self.adapters)) or "none"
            raise LoraError(f"no adapter named {name!r} is loaded (loaded: {loaded})")
        return adapter
