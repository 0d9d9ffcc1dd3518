"""The portable model's config.pbtxt parameters turned into the engine's configuration."""
from __future__ import annotations


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def resolve_kv_cache_bytes(value: str) -> int:
    """"auto" is 0, which the engine sizes once the weights are loaded (engines/portable/kv_budget.py): what the
    GPU has free on CUDA (EngineConfig.gpu_memory_utilization), one full context on CPU (256 MiB to 4 GiB)."""
    return 0 if value == "auto" else int(value)


def engine_config_from_parameters(parameters: dict[str, str]):
    from engines.portable.config import EngineConfig

    device = resolve_device(parameters.get("device", "auto"))
    return EngineConfig(
        device=device,
        dtype=resolve_dtype(parameters.get("dtype", "auto"), device),
        block_size=int(parameters.get("block_size", 16)),
        kv_cache_memory_bytes=resolve_kv_cache_bytes(parameters.get("kv_cache_memory_bytes", "auto")),
        max_num_seqs=int(parameters.get("max_num_seqs", 64)),
        max_num_batched_tokens=int(parameters.get("max_num_batched_tokens", 2048)),
        enable_prefix_caching=parameters.get("enable_kv_cache_reuse", "true").lower() == "true",
    )


DEFAULT_CANCELLATION_CHECK_PERIOD_MS = 100


def cancellation_check_period_s(parameters: dict[str, str]) -> float:
    """How often the model asks Triton which requests were cancelled (and refreshes its gauges): TensorRT-LLM's
    `cancellation_check_period_ms`. A cancelled request stops generating within about one period."""
    value = int(parameters.get("cancellation_check_period_ms", DEFAULT_CANCELLATION_CHECK_PERIOD_MS))
    if value <= 0:
        raise ValueError(f"cancellation_check_period_ms must be positive, got {value}")
    return value / 1000.0
