"""Load a Hugging Face safetensors checkpoint, fusing q/k/v and gate/up projections at load time."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from engines.portable.config import ModelConfig
from engines.portable.cpu_weights import pack

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def read_tensors(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted(Path(checkpoint_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint_dir}: no *.safetensors weights")
    tensors = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    return tensors


def load_weights(checkpoint_dir: Path, config: ModelConfig, device: str, dtype: torch.dtype,
                 int8_rows: int = 0) -> dict:
    """Weights by role: embed, norm, lm_head, and per layer qkv, o, gate_up, down and the two norms. With
    `int8_rows` > 0 the projections and lm_head also get int8 copies (int4 where the weights lie on a 4-bit grid;
    engines/portable/cpu_weights.py), used for steps of up to that many tokens, quantized from the checkpoint's
    own precision."""
    raw = read_tensors(checkpoint_dir)

    def take(name: str) -> torch.Tensor:
        if name not in raw:
            raise ValueError(f"{checkpoint_dir}: weight {name} is missing")
        return raw[name]

    def put(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=device, dtype=dtype).contiguous()

    def projection(tensor: torch.Tensor, dense: torch.Tensor | None = None):
        dense = put(tensor) if dense is None else dense
        return pack(tensor, dense, int8_rows) if int8_rows > 0 else dense

    layers = []
    for index in range(config.num_layers):
        prefix = f"model.layers.{index}"
        attn, mlp = f"{prefix}.self_attn", f"{prefix}.mlp"
        layers.append({
            "input_norm": put(take(f"{prefix}.input_layernorm.weight")),
            "post_norm": put(take(f"{prefix}.post_attention_layernorm.weight")),
            "qkv": projection(torch.cat([take(f"{attn}.{p}_proj.weight") for p in "qkv"], dim=0)),
            "o": projection(take(f"{attn}.o_proj.weight")),
            "gate_up": projection(torch.cat([take(f"{mlp}.gate_proj.weight"), take(f"{mlp}.up_proj.weight")], dim=0)),
            "down": projection(take(f"{mlp}.down_proj.weight")),
        })
    embed = put(take("model.embed_tokens.weight"))
    if config.tie_word_embeddings:
        lm_head = projection(take("model.embed_tokens.weight"), dense=embed)
    else:
        lm_head = projection(take("lm_head.weight"))
    return {"embed": embed, "norm": put(take("model.norm.weight")), "lm_head": lm_head, "layers": layers}
