"""LoRA in the TensorRT-LLM build plan: the `trtllm-build` flags, the memory adapters take, and the
backend's LoRA cache parameters.

Checked against TensorRT-LLM: `trtllm-build --lora_plugin <dtype> --lora_target_modules ... --max_lora_rank N`
(tensorrt_llm/commands/build.py; q, k and v are adapted together, tensorrt_llm/lora_manager.py); the backend
keeps adapters sent with requests in a host cache (`lora_cache_host_memory_bytes`) and a device cache that takes
`lora_cache_gpu_memory_fraction` of the memory left AFTER the engine and the KV cache
(batch_manager/peftCacheManager.cpp), which must hold at least one adapter of `lora_cache_max_adapter_size`.
The request tensor `lora_weights` is FP16 in the backend's config.pbtxt and TensorRT-LLM requires adapter
weights in the engine's dtype (runtime/loraUtils.cpp), so a LoRA engine is built in float16.
"""
from __future__ import annotations

import math

# TensorRT-LLM module names of the Llama/Mistral projections (engines/lora_format.TRTLLM_MODULES)
LORA_MODULES = ("attn_q", "attn_k", "attn_v", "attn_dense", "mlp_h_to_4h", "mlp_4h_to_h", "mlp_gate")
QKV = ("attn_q", "attn_k", "attn_v")
ROW_PARALLEL = ("attn_dense", "mlp_4h_to_h")  # split along their input features under TP; the rest along outputs
DEFAULT_HOST_CACHE_BYTES = 1 << 30


def target_modules(modules) -> tuple[str, ...]:
    """The modules in TensorRT-LLM's order, q/k/v completed as TensorRT-LLM does; unknown names raise."""
    modules = tuple(modules)
    unknown = sorted(set(modules) - set(LORA_MODULES))
    if unknown:
        raise ValueError(f"lora_target_modules {unknown} are not among {', '.join(LORA_MODULES)}")
    if any(m in QKV for m in modules):
        modules += QKV
    return tuple(m for m in LORA_MODULES if m in modules)


def module_features(config, module: str) -> tuple[int, int]:
    hidden, inter = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    return {"attn_q": (hidden, q), "attn_k": (hidden, kv), "attn_v": (hidden, kv), "attn_dense": (q, hidden),
            "mlp_h_to_4h": (hidden, inter), "mlp_gate": (hidden, inter), "mlp_4h_to_h": (inter, hidden)}[module]


def adapter_bytes_per_gpu(config, profile, tp: int, pp: int) -> int:
    """One adapter of max_lora_rank on every target module, as one GPU holds it (its TP slice, its PP layers)."""
    per_layer = 0
    for module in target_modules(profile.lora_target_modules):
        features_in, features_out = module_features(config, module)
        if module in ROW_PARALLEL:
            features_in //= tp
        else:
            features_out //= tp
        per_layer += profile.max_lora_rank * (features_in + features_out)
    return per_layer * math.ceil(config.num_layers / pp) * 2  # float16


def workspace_bytes(config, profile) -> int:
    """The plugin's low-rank activations: max_num_tokens × rank per target module, float16."""
    return profile.max_num_tokens * profile.max_lora_rank * len(target_modules(profile.lora_target_modules)) * 2


def lora_cache(config, profile, tp: int, pp: int, free_bytes: int, kv_budget_bytes: int) -> dict:
    """The device cache for `max_loras` adapters and the backend parameters that give it; `fits` False when
    the memory left after the KV cache cannot hold it."""
    adapter = adapter_bytes_per_gpu(config, profile, tp, pp)
    device = profile.max_loras * adapter
    left = max(free_bytes - kv_budget_bytes, 0)
    fraction = math.ceil(device / left * 1000) / 1000 if left else math.inf
    return {
        "max_loras": profile.max_loras,
        "max_lora_rank": profile.max_lora_rank,
        "target_modules": list(target_modules(profile.lora_target_modules)),
        "adapter_bytes_per_gpu": adapter,
        "device_cache_bytes": device,
        "left_after_kv_cache_bytes": left,
        "lora_cache_gpu_memory_fraction": fraction,
        "lora_cache_host_memory_bytes": max(DEFAULT_HOST_CACHE_BYTES, 4 * device),
        "fits": fraction <= 1.0,
    }


def build_flags(profile) -> list[str]:
    if not profile.max_loras:
        return []
    return ["--lora_plugin", profile.dtype, "--lora_target_modules", *target_modules(profile.lora_target_modules),
            "--max_lora_rank", str(profile.max_lora_rank)]


def backend_parameters(lora: dict) -> dict[str, str]:
    """The tensorrt_llm model's LoRA cache parameters (tensorrtllm_backend docs/lora.md)."""
    if not lora:
        return {}
    return {"lora_cache_gpu_memory_fraction": str(lora["lora_cache_gpu_memory_fraction"]),
            "lora_cache_host_memory_bytes": str(lora["lora_cache_host_memory_bytes"]),
            "lora_cache_max_adapter_size": str(lora["max_lora_rank"]),
            "lora_cache_optimal_adapter_size": str(min(8, lora["max_lora_rank"]))}


def check_engine(engine_config: dict, lora: dict) -> list[str]:
    """Differences between a built engine's LoRA settings and the plan's."""
    build = engine_config.get("build_config", {})
    plugin = build.get("plugin_config", {}).get("lora_plugin")
    if not lora:
        return [] if plugin in (None, False) else [f"the engine has lora_plugin {plugin!r}, the plan has no LoRA"]
    problems = [] if plugin else ["the engine was built without the LoRA plugin (lora_plugin is unset)"]
    config = build.get("lora_config") or {}
    if config.get("max_lora_rank") != lora["max_lora_rank"]:
        problems.append(f"build_config.lora_config.max_lora_rank is {config.get('max_lora_rank')!r}, "
                        f"the plan says {lora['max_lora_rank']}")
    if sorted(config.get("lora_target_modules") or []) != sorted(lora["target_modules"]):
        problems.append(f"build_config.lora_config.lora_target_modules is {config.get('lora_target_modules')!r}, "
                        f"the plan says {lora['target_modules']}")
    return problems
