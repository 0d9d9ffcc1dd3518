"""Model and engine configuration: frozen objects that flow down from the engine to every part."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
# "dynamic" NTK scaling is left out: transformers re-derives the frequencies from the longest
# sequence of each forward call, which chunked prefill and prefix reuse cannot reproduce.
SUPPORTED_ROPE_SCALINGS = ("linear", "llama3")


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    sliding_window: int | None
    tie_word_embeddings: bool

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        architecture = (raw.get("architectures") or ["?"])[0]
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"unsupported architecture {architecture!r}; "
                             f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
        rope = dict(raw.get("rope_parameters") or {})
        scaling = raw.get("rope_scaling") or rope or None
        if scaling and scaling.get("rope_type", scaling.get("type", "default")) == "default":
            scaling = None
        _check_supported(raw, scaling)
        heads = raw["num_attention_heads"]
        return cls(
            architecture=architecture,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=float(raw.get("rope_theta", rope.get("rope_theta", 10000.0))),
            rope_scaling=scaling,
            max_position_embeddings=raw.get("max_position_embeddings", 4096),
            sliding_window=raw.get("sliding_window") if architecture == "MistralForCausalLM" else None,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        )

    @classmethod
    def from_dir(cls, checkpoint_dir: str | Path) -> "ModelConfig":
        path = Path(checkpoint_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no config.json in the checkpoint")
        return cls.from_dict(json.loads(path.read_text()))


def _check_supported(raw: dict, scaling: dict | None) -> None:
    """Refuse, before any weight is read, what the forward would otherwise get silently wrong."""
    kind = scaling and scaling.get("rope_type", scaling.get("type"))
    if kind and kind not in SUPPORTED_ROPE_SCALINGS:
        raise ValueError(f"rope scaling {kind!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_SCALINGS)})")
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {raw['hidden_act']!r} is not supported: the MLP is SwiGLU (silu)")
    for flag in ("attention_bias", "mlp_bias"):
        if raw.get(flag):
            raise ValueError(f"{flag}=true is not supported: the portable engine's projections have no bias")


@dataclass(frozen=True)
class EngineConfig:
    device: str = "cpu"
    dtype: str = "float32"
    block_size: int = 16
    num_kv_blocks: int | None = None  # None: derived from kv_cache_memory_bytes
    kv_cache_memory_bytes: int = 256 << 20  # 0: auto (engines/portable/kv_budget.py)
    gpu_memory_utilization: float = 0.92
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    max_model_len: int | None = None  # None: the model's max_position_embeddings (capped to the KV pool)
    cuda_graphs: bool = True  # capture decode steps on CUDA
    # with CUDA graphs: launch the next greedy decode step before reading this one's tokens
    pipeline_decode: bool = True
    # LoRA: adapters held on the device at once (0: no adapters) and the largest rank they may have
    max_loras: int = 0
    max_lora_rank: int = 16
    # the per-token LoRA correction: "torch" (masked matmuls over all slots, every device), "triton" (the kernels of
    # engines/portable/lora_kernels.py: CUDA, ranks a power of two >= 16), or "auto": triton where it can run.
    # torch stays the default until the kernels' GPU benchmark is recorded.
    lora_kernel: str = "torch"
    # bfloat16 on the CPU: int8 copies of the projections (int4 for weights on a 4-bit grid) for steps of up to
    # cpu_int8_max_rows tokens (engines/portable/cpu_weights.py): "auto" (on for bfloat16 on the CPU), "int8"
    # (the same, required) or "dense" (off)
    cpu_weights: str = "auto"
    cpu_int8_max_rows: int = 4
    # intra-op threads of CPU steps of up to cpu_int8_max_rows tokens (engines/portable/cpu_threads.py; 0: the
    # process's own count, as for every larger step)
    cpu_small_step_threads: int = 1

    def __post_init__(self):
        if self.block_size <= 0 or self.max_num_seqs <= 0:
            raise ValueError("block_size and max_num_seqs must be positive")
        if self.num_kv_blocks is not None and self.num_kv_blocks <= 0:
            raise ValueError(f"num_kv_blocks must be positive (or None to size the pool from memory), "
                             f"got {self.num_kv_blocks}")
        if self.max_loras < 0 or self.max_lora_rank <= 0:
            raise ValueError("max_loras must be >= 0 and max_lora_rank positive")
        if self.lora_kernel not in ("auto", "triton", "torch"):
            raise ValueError(f"lora_kernel must be auto, triton or torch, got {self.lora_kernel!r}")
        if self.cpu_small_step_threads < 0 or self.cpu_int8_max_rows < 0:
            raise ValueError("cpu_small_step_threads and cpu_int8_max_rows must be >= 0")
        if self.max_num_batched_tokens <= 0:
            raise ValueError("max_num_batched_tokens must be positive")
