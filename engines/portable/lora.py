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
import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from engines.portable.config import ModelConfig

# PEFT's module names, by the fused projection that holds them, in the order of its output rows
PROJECTIONS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gate_up": ("gate_proj", "up_proj"),
               "down": ("down_proj",)}
MODULE_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                 "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
ALL_MODULES = tuple(MODULE_PARENT)
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


class LoraError(ValueError):
    """An adapter that cannot be served; the message names the file and the field or tensor."""


def _shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) features of each adapted module."""
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    hidden, inter = config.hidden_size, config.intermediate_size
    return {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
            "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}


@dataclass(frozen=True)
class LoraAdapter:
    """One adapter in host memory: per (layer, module) its A [r, in] and B [out, r], B already scaled."""

    name: str
    rank: int
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    uid: int  # distinguishes two adapters registered under one name, for the prefix cache

    @property
    def cache_salt(self) -> bytes:
        """Seeds the prefix cache's block hashes: KV computed under one adapter is never reused by another."""
        return hashlib.sha256(f"lora:{self.uid}:{self.name}".encode()).digest()


_UIDS = itertools.count(1)


def _read_config(path: Path) -> dict:
    file = path / "adapter_config.json"
    if not file.is_file():
        raise LoraError(f"{path}: no adapter_config.json (expected a PEFT LoRA adapter folder)")
    config = json.loads(file.read_text())
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}; only LORA is supported")
    for key in ("use_dora", "fan_in_fan_out"):
        if config.get(key):
            problems.append(f"{key}=true is not supported")
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config['bias']!r} is not supported (only 'none')")
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save"):
        if config.get(key):
            problems.append(f"{key} is not supported")
    if not isinstance(config.get("r"), int) or config["r"] <= 0:
        problems.append(f"r must be a positive integer, got {config.get('r')!r}")
    if problems:
        raise LoraError(f"{file}: " + "; ".join(problems))
    return config


def load_peft_adapter(name: str, path: str | Path, model: ModelConfig, max_rank: int) -> LoraAdapter:
    """Read a PEFT adapter folder and check it against the model; weights stay on the host in fp32."""
    path = Path(path)
    config = _read_config(path)
    rank = config["r"]
    if rank > max_rank:
        raise LoraError(f"{path}: rank {rank} is above the engine's max_lora_rank {max_rank}")
    alpha = config.get("lora_alpha", rank)
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    files = [path / "adapter_model.safetensors"]
    if not files[0].is_file():
        raise LoraError(f"{path}: no adapter_model.safetensors")
    tensors = load_file(str(files[0]))
    shapes, pairs = _shapes(model), {}
    for key, tensor in tensors.items():
        match = _KEY.search(key)
        if match is None:
            raise LoraError(f"{files[0]}: tensor {key} is not a LoRA weight of a Llama/Mistral projection")
        layer, parent, module, which = int(match[1]), match[2], match[3], match[4]
        if module not in MODULE_PARENT or MODULE_PARENT[module] != parent or not 0 <= layer < model.num_layers:
            raise LoraError(f"{files[0]}: tensor {key} names no projection of this model")
        pairs.setdefault((layer, module), {})[which] = tensor.float()
    weights = {}
    for (layer, module), pair in sorted(pairs.items()):
        where = f"{files[0]}: layer {layer} {module}"
        if set(pair) != {"A", "B"}:
            raise LoraError(f"{where}: lora_A and lora_B must both be present")
        a, b = pair["A"], pair["B"]
        features_in, features_out = shapes[module]
        if a.shape != (rank, features_in) or b.shape != (features_out, rank):
            raise LoraError(f"{where}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit rank {rank} "
                            f"and the model's {features_in} -> {features_out} projection")
        weights[(layer, module)] = (a.contiguous(), (b * scaling).contiguous())
    if not weights:
        raise LoraError(f"{files[0]}: holds no LoRA weights")
    return LoraAdapter(name, rank, weights, next(_UIDS))


class LoraSlots:
    """The device side: `max_loras` slots of every layer's A and B, and which adapter holds which slot."""

    def __init__(self, model: ModelConfig, max_loras: int, max_rank: int, device: torch.device,
                 dtype: torch.dtype):
        self.max_loras, self.max_rank = max_loras, max_rank
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
        self._row_offsets = {projection: list(itertools.accumulate([shapes[m][1] for m in modules], initial=0))
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
                offsets = self._row_offsets[projection]
                for sub, module in enumerate(modules):
                    start = (slot * len(modules) + sub) * rank
                    a_all[start:start + rank].zero_()
                    b_all[offsets[sub]:offsets[sub + 1], start:start + rank].zero_()
                    pair = adapter.weights.get((index, module))
                    if pair is None:
                        continue
                    a, b = pair
                    a_all[start:start + adapter.rank].copy_(a)
                    b_all[offsets[sub]:offsets[sub + 1], start:start + adapter.rank].copy_(b)

    def delta(self, layer: int, projection: str, x: torch.Tensor, token_slots: torch.Tensor) -> torch.Tensor:
        """The LoRA correction of projection `projection` of `layer` for tokens x [T, in] of slots [T]."""
        a_all, b_all = self.layers[layer][projection]
        hidden = x @ a_all.t()
        mask = (self.column_slot[projection][None, :] == token_slots[:, None]).to(hidden.dtype)
        return (hidden * mask) @ b_all.t()


class LoraRegistry:
    """Adapters by name (host memory) and their device slots."""

    def __init__(self, model: ModelConfig, max_loras: int, max_rank: int, device: torch.device,
                 dtype: torch.dtype):
        self.model, self.max_rank = model, max_rank
        self.adapters: dict[str, LoraAdapter] = {}
        self.slots = LoraSlots(model, max_loras, max_rank, device, dtype)

    @property
    def max_loras(self) -> int:
        return self.slots.max_loras

    def add(self, name: str, path: str | Path) -> LoraAdapter:
        if not name:
            raise LoraError("an adapter needs a name")
        adapter = load_peft_adapter(name, path, self.model, self.max_rank)
        self.adapters[name] = adapter
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
