"""The portable model's config.pbtxt parameters turned into the engine's configuration."""
from __future__ import annotations


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """"auto": bfloat16 on CUDA, and on a CPU that computes it natively (AVX-512 BF16 or AMX), where it halves
    the bytes every decode step reads; float32 on other CPUs, where bfloat16 matmuls are emulated."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda") or cpu_has_fast_bfloat16():
        return "bfloat16"
    return "float32"


def cpu_has_fast_bfloat16() -> bool:
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_kv_cache_bytes(value: str) -> int:
    """"auto" is 0, which the engine sizes once the weights are loaded (engines/portable/kv_budget.py): what the
    GPU has free on CUDA (EngineConfig.gpu_memory_utilization), one full context on CPU (256 MiB to 4 GiB)."""
    return 0 if value == "auto" else int(value)


def cpu_threads(value: str, device: str) -> int | None:
    """Intra-op threads of the engine's process. "auto" keeps torch's default (one per core): on a 2-core
    machine under load, one thread decoded faster in process but slower behind Triton than two
    (benchmarks/results/llamacpp_vs_ingot_cpu_smollm2_bf16/NOTE.md), so no fewer is imposed; set a number
    to leave cores to tritonserver and the gateway."""
    if value == "auto":
        return None
    threads = int(value)
    if threads <= 0:
        raise ValueError(f"cpu_threads must be positive or auto, got {value}")
    return threads


def apply_cpu_threads(parameters: dict[str, str]) -> int | None:
    """Set this process's torch threads from the parameters (before any model work); returns the count set."""
    import torch

    threads = cpu_threads(parameters.get("cpu_threads", "auto"), resolve_device(parameters.get("device", "auto")))
    if threads is not None:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)  # the engine runs one operator at a time
        except RuntimeError:  # already set, or parallel work already ran in this process
            pass
    return threads


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
        max_loras=int(parameters.get("max_loras", 0)),
        max_lora_rank=int(parameters.get("max_lora_rank", 16)),
        cpu_weights=parameters.get("cpu_weights", "auto"),
        cpu_small_step_threads=int(parameters.get("cpu_small_step_threads", 1)),
    )


def lora_host_cache_bytes(parameters: dict[str, str]) -> int:
    """TensorRT-LLM's `lora_cache_host_memory_bytes`: the host cache of adapters sent with requests."""
    from engines.triton.lora_tasks import DEFAULT_HOST_CACHE_BYTES

    value = int(parameters.get("lora_cache_host_memory_bytes", DEFAULT_HOST_CACHE_BYTES))
    if value <= 0:
        raise ValueError(f"lora_cache_host_memory_bytes must be positive, got {value}")
    return value


def response_sender_threads(parameters: dict[str, str]) -> int:
    """Threads sending responses: each send is a round trip to tritonserver with the GIL released, so several
    overlap; each request is answered by one of them."""
    value = int(parameters.get("response_sender_threads", 1))
    if value < 1:
        raise ValueError(f"response_sender_threads must be at least 1, got {value}")
    return value


def gil_switch_interval_s(parameters: dict[str, str]) -> float | None:
    """The stub's GIL switch interval (`gil_switch_interval_us`; "auto": None, Python's own 5 ms). The engine
    thread waits for the GIL whenever a step's results come back while the sender thread holds it; a shorter
    interval bounds that wait."""
    value = parameters.get("gil_switch_interval_us", "auto")
    if value == "auto":
        return None
    if int(value) <= 0:
        raise ValueError(f"gil_switch_interval_us must be positive or auto, got {value}")
    return int(value) / 1e6


DEFAULT_CANCELLATION_CHECK_PERIOD_MS = 100


def cancellation_check_period_s(parameters: dict[str, str]) -> float:
    """How often the model asks Triton which requests were cancelled (and refreshes its gauges): TensorRT-LLM's
    `cancellation_check_period_ms`. A cancelled request stops generating within about one period."""
    value = int(parameters.get("cancellation_check_period_ms", DEFAULT_CANCELLATION_CHECK_PERIOD_MS))
    if value <= 0:
        raise ValueError(f"cancellation_check_period_ms must be positive, got {value}")
    return value / 1000.0


def engine_in_process(parameters: dict[str, str]) -> bool:
    """Whether the engine runs in the stub's interpreter (`engine_process` "false") rather than a process of its
    own ("true"); "auto" (and repositories written before the parameter): its own process on CUDA, where the
    sender thread's share of the stub's GIL slowed every engine step, in the stub on CPU, where one process
    fewer leaves the few cores to the engine."""
    value = parameters.get("engine_process", "auto").lower()
    if value not in ("auto", "true", "false"):
        raise ValueError(f"engine_process must be auto, true or false, got {value}")
    if value == "auto":
        return not resolve_device(parameters.get("device", "auto")).startswith("cuda")
    return value == "false"
