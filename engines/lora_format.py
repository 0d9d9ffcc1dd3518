"""LoRA adapters as data: read from PEFT folders, written as TensorRT-LLM's `lora_weights` / `lora_config`
request tensors, and read back from them.

numpy only (no torch): the gateway converts adapters for the TensorRT-LLM backend, and its image has no torch.

TensorRT-LLM's layout (tensorrtllm_backend config.pbtxt; tensorrt_llm/lora_manager.py; runtime/loraUtils.cpp):
- `lora_config` [rows, 3] INT32: one row per (module, layer): [module_id, layer_idx, adapter_size];
- `lora_weights` [rows, D·Hi + Ho·D] FP16: the row's A [D, Hi] flattened, then B [Ho, D] flattened, B already
  multiplied by the adapter's scaling (lora_alpha / r, or lora_alpha / √r with rsLoRA), zero-padded to the
  longest row;
- module ids are LoraModule::ModuleType's; a Llama/Mistral projection maps to one as below. TensorRT-LLM
  needs q, k and v adapted together: a row left out of those is written as zeros.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Hugging Face projection -> TensorRT-LLM module name and LoraModule::ModuleType id
TRTLLM_MODULES = {"q_proj": ("attn_q", 1), "k_proj": ("attn_k", 2), "v_proj": ("attn_v", 3),
                  "o_proj": ("attn_dense", 4), "gate_proj": ("mlp_h_to_4h", 5), "down_proj": ("mlp_4h_to_h", 6),
                  "up_proj": ("mlp_gate", 7)}
MODULE_OF_ID = {module_id: name for name, (_, module_id) in TRTLLM_MODULES.items()}
MODULE_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                 "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
QKV = ("q_proj", "k_proj", "v_proj")
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


class LoraError(ValueError):
    """An adapter that cannot be served; the message names the file and the field or tensor."""


@dataclass(frozen=True)
class ModelShapes:
    """What an adapter is checked against: the layers and each projection's (in, out) features."""

    num_layers: int
    features: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, num_layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int,
           intermediate: int) -> "ModelShapes":
        q, kv = heads * head_dim, kv_heads * head_dim
        return cls(num_layers, {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
                                "o_proj": (q, hidden), "gate_proj": (hidden, intermediate),
                                "up_proj": (hidden, intermediate), "down_proj": (intermediate, hidden)})


@dataclass(frozen=True)
class AdapterWeights:
    """Per (layer, projection): A [r, in] and B [out, r] in float32, B already multiplied by the scaling."""

    weights: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]

    @property
    def rank(self) -> int:
        return max(a.shape[0] for a, _ in self.weights.values())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.weights.values())


# ---- safetensors, read without torch (numpy has no bfloat16: its bits are widened to float32 here)

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as float32."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise LoraError(f"{path}: not a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + header_len])
    except ValueError as exc:
        raise LoraError(f"{path}: not a safetensors file ({exc})") from None
    body, tensors = memoryview(data)[8 + header_len:], {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise LoraError(f"{path}: tensor {name} has dtype {info['dtype']}; adapters must be F32, F16 or BF16")
        start, end = info["data_offsets"]
        array = np.frombuffer(body[start:end], dtype=dtype).reshape(info["shape"])
        if info["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = array.astype(np.float32)
    return tensors


# ---- PEFT folders

def read_peft_config(path: Path) -> dict:
    file = path / "adapter_config.json"
    if not file.is_file():
        raise LoraError(f"{path}: no adapter_config.json (expected a PEFT LoRA adapter folder)")
    try:
        config = json.loads(file.read_text())
    except ValueError as exc:
        raise LoraError(f"{file}: not JSON ({exc})") from None
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


def peft_scaling(config: dict) -> float:
    rank, alpha = config["r"], config.get("lora_alpha", config["r"])
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def read_peft_adapter(path: str | Path, shapes: ModelShapes | None = None,
                      max_rank: int | None = None) -> AdapterWeights:
    """A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors), checked against `shapes` and
    `max_rank` when given."""
    path = Path(path)
    config = read_peft_config(path)
    rank, scaling = config["r"], peft_scaling(config)
    if max_rank is not None and rank > max_rank:
        raise LoraError(f"{path}: rank {rank} is above the engine's max_lora_rank {max_rank}")
    file = path / "adapter_model.safetensors"
    if not file.is_file():
        raise LoraError(f"{path}: no adapter_model.safetensors")
    pairs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, tensor in read_safetensors(file).items():
        match = _KEY.search(key)
        if match is None:
            raise LoraError(f"{file}: tensor {key} is not a LoRA weight of a Llama/Mistral projection")
        layer, parent, module, which = int(match[1]), match[2], match[3], match[4]
        if MODULE_PARENT.get(module) != parent:
            raise LoraError(f"{file}: tensor {key} names no projection of a Llama/Mistral model")
        pairs.setdefault((layer, module), {})[which] = tensor
    weights = {}
    for (layer, module), pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise LoraError(f"{file}: layer {layer} {module}: lora_A and lora_B must both be present")
        weights[(layer, module)] = (np.ascontiguousarray(pair["A"]), np.ascontiguousarray(pair["B"] * scaling))
    if not weights:
        raise LoraError(f"{file}: holds no LoRA weights")
    adapter = AdapterWeights(weights)
    check_adapter(adapter, shapes, str(file))
    return adapter


def check_adapter(adapter: AdapterWeights, shapes: ModelShapes | None, where: str) -> None:
    """Every pair has one rank and fits the model's projection."""
    for (layer, module), (a, b) in adapter.weights.items():
        rank = a.shape[0]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != rank:
            raise LoraError(f"{where}: layer {layer} {module}: lora_A {a.shape} and lora_B {b.shape} "
                            "do not share a rank")
        if shapes is None:
            continue
        if not 0 <= layer < shapes.num_layers:
            raise LoraError(f"{where}: layer {layer} is outside the model's {shapes.num_layers} layers")
        features_in, features_out = shapes.features[module]
        if a.shape[1] != features_in or b.shape[0] != features_out:
            raise LoraError(f"{where}: layer {layer} {module}: lora_A {tuple(a.shape)} and lora_B "
                            f"{tuple(b.shape)} do not fit the model's {features_in} -> {features_out} projection")


# ---- TensorRT-LLM's request tensors

def to_trtllm(adapter: AdapterWeights, dtype=np.float16) -> tuple[np.ndarray, np.ndarray]:
    """(lora_weights [rows, width], lora_config [rows, 3]) without the batch dimension. A layer adapting some
    of q, k, v gets zero rows [r, hidden] / [hidden, r] for the others, as TensorRT-LLM's own loader writes
    (its LoRA plugin adapts the three together)."""
    weights = dict(adapter.weights)
    for layer in sorted({layer for layer, module in weights if module in QKV}):
        rank, hidden = next(weights[(layer, m)][0].shape for m in QKV if (layer, m) in weights)
        for module in QKV:
            if (layer, module) not in weights:
                weights[(layer, module)] = (np.zeros((rank, hidden), np.float32), np.zeros((hidden, rank), np.float32))
    keys = sorted(weights, key=lambda key: (key[0], TRTLLM_MODULES[key[1]][1]))
    rows = [np.concatenate([weights[key][0].reshape(-1), weights[key][1].reshape(-1)]) for key in keys]
    width = max(row.size for row in rows)
    out = np.zeros((len(rows), width), dtype=dtype)
    for index, row in enumerate(rows):
        out[index, :row.size] = row
    config = [(TRTLLM_MODULES[module][1], layer, weights[(layer, module)][0].shape[0]) for layer, module in keys]
    return out, np.array(config, dtype=np.int32).reshape(-1, 3)


def from_trtllm(lora_weights: np.ndarray, lora_config: np.ndarray, shapes: ModelShapes,
                max_rank: int) -> AdapterWeights:
    """The engine side of `to_trtllm`: the tensors of a request (with or without the batch dimension),
    checked as TensorRT-LLM checks them."""
    config = np.asarray(lora_config)
    weights = np.asarray(lora_weights)
    if config.ndim == 3:
        config = config[0]
    if weights.ndim == 3:
        weights = weights[0]
    if config.ndim != 2 or config.shape[1] not in (3, 4) or weights.ndim != 2:
        raise LoraError(f"lora_config must be [rows, 3] and lora_weights [rows, width]; got {list(config.shape)} "
                        f"and {list(weights.shape)}")
    if config.shape[0] != weights.shape[0]:
        raise LoraError(f"Expected dim1 lora_weights and lora_config to have the same size "
                        f"({weights.shape[0]} != {config.shape[0]})")
    if config.shape[1] == 4 and np.any(config[:, 3]):
        raise LoraError("DoRA adapters (lora_config is_dora=1) are not supported")
    result = {}
    for row, (module_id, layer, rank) in enumerate(config[:, :3].tolist()):
        module = MODULE_OF_ID.get(module_id)
        if module is None:
            raise LoraError(f"lora_config row {row}: lora module id {module_id} is not enabled for this model "
                            f"(supported: {sorted(MODULE_OF_ID)})")
        if not 0 <= layer < shapes.num_layers:
            raise LoraError(f"lora_config row {row}: Expected layerId to be in the range [0, {shapes.num_layers})")
        if not 0 < rank <= max_rank:
            raise LoraError(f"lora_config row {row}: adapter size {rank} must be in 1..{max_rank} (max_lora_rank)")
        features_in, features_out = shapes.features[module]
        size_in, size_out = rank * features_in, rank * features_out
        if size_in + size_out > weights.shape[1]:
            raise LoraError(f"lora_config row {row}: lora_weights has too few values for {TRTLLM_MODULES[module][0]} "
                            f"({weights.shape[1]} < {size_in + size_out})")
        flat = weights[row].astype(np.float32)
        a = flat[:size_in].reshape(rank, features_in)
        b = flat[size_in:size_in + size_out].reshape(features_out, rank)
        if (layer, module) in result:
            raise LoraError(f"lora_config row {row}: layer {layer} {module} appears twice")
        if a.any() or b.any():  # the zero rows a converter adds for q/k/v cost nothing when skipped
            result[(layer, module)] = (np.ascontiguousarray(a), np.ascontiguousarray(b))
    if not result:
        raise LoraError("lora_weights hold no non-zero adapter weights")
    return AdapterWeights(result)


# ---- task ids

def task_id_of(path: str | Path) -> int:
    """A LoRA task id derived from the adapter's files: the same adapter gets the same id in every gateway
    worker and pod (TensorRT-LLM caches by id), a changed adapter a new one. 63 bits, so signed readers agree."""
    import hashlib

    path = Path(path)
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        file = path / name
        if not file.is_file():
            raise LoraError(f"{path}: no {name} (expected a PEFT LoRA adapter folder)")
        digest.update(file.read_bytes())
    return int.from_bytes(digest.digest()[:8], "big") & (2**63 - 1)
