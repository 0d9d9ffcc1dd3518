"""Build profiles: the GPU a TensorRT-LLM engine is compiled for and the limits it is built with.

An engine is specific to a GPU model and to its build-time limits (max batch, input and sequence
lengths, max_num_tokens), so a profile names both. Memory sizes are the cards' nominal capacity in
GiB; the plan keeps a runtime reserve on top of the weights and the KV cache to absorb the difference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

GIB = 1 << 30

# Quantization modes and what TensorRT-LLM calls them.
QUANTIZATIONS = ("none", "int8_weight_only", "int4_weight_only", "int4_awq", "smoothquant", "fp8")
DTYPES = ("float16", "bfloat16")
MAX_BEAM_WIDTH = 16  # the gateway's most beams (server.protocol.MAX_CHOICES)


class ProfileError(ValueError):
    pass


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: int
    compute_capability: str
    supports_fp8: bool


A100_40GB = GpuSpec("NVIDIA A100-SXM4-40GB", 40 * GIB, "8.0", supports_fp8=False)
A100_80GB = GpuSpec("NVIDIA A100-SXM4-80GB", 80 * GIB, "8.0", supports_fp8=False)
H100_80GB = GpuSpec("NVIDIA H100-SXM5-80GB", 80 * GIB, "9.0", supports_fp8=True)


@dataclass(frozen=True)
class BuildProfile:
    name: str
    gpu: GpuSpec
    instance_type: str
    gpus_per_node: int
    max_batch_size: int = 64
    max_input_len: int = 2048
    max_seq_len: int = 4096
    max_num_tokens: int = 8192
    dtype: str = "float16"
    quantization: str = "none"
    tp_size: int | None = None  # None: the plan picks the smallest that fits
    pp_size: int = 1
    kv_cache_free_gpu_mem_fraction: float = 0.9
    runtime_reserve_bytes: int = 2 * GIB  # CUDA context, cuBLAS/NCCL workspaces, allocator slack
    min_concurrent_sequences: int = 4  # a plan that cannot hold this many full-length sequences does not fit
    # What the engine can return: beams (TensorRT-LLM 0.12 runs every request of an engine built with
    # max_beam_width k > 1 with exactly k beams), and raw logits rows for prompt logprobs (context) and
    # top logprobs (generation). Each costs memory, so they are off unless asked for.
    max_beam_width: int = 1
    gather_context_logits: bool = False
    gather_generation_logits: bool = False
    # LoRA (engines/lora_plan.py): adapters the device cache holds at once (0: built without the LoRA plugin),
    # their largest rank, and TensorRT-LLM's names of the adapted projections
    max_loras: int = 0
    max_lora_rank: int = 64
    lora_target_modules: tuple[str, ...] = ("attn_q", "attn_k", "attn_v", "attn_dense", "mlp_h_to_4h",
                                            "mlp_4h_to_h", "mlp_gate")

    def with_overrides(self, **overrides) -> "BuildProfile":
        """A copy with the given fields replaced (None values are ignored), validated."""
        given = {key: value for key, value in overrides.items() if value is not None}
        unknown = sorted(set(given) - set(self.__dataclass_fields__))
        if unknown:
            raise ProfileError(f"unknown profile fields: {', '.join(unknown)}")
        profile = replace(self, **given)
        profile.validate()
        return profile

    def validate(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise ProfileError(f"quantization {self.quantization!r} is not one of: {', '.join(QUANTIZATIONS)}")
        if self.quantization == "fp8" and not self.gpu.supports_fp8:
            raise ProfileError(
                f"profile {self.name}: FP8 needs Hopper (compute capability 9.0) or newer; "
                f"{self.gpu.name} is {self.gpu.compute_capability} and has no FP8 tensor cores. "
                "Use int8_weight_only, int4_awq or smoothquant on A100, or the h100-80gb profile."
            )
        if self.dtype not in DTYPES:
            raise ProfileError(f"dtype {self.dtype!r} is not one of: {', '.join(DTYPES)}")
        for name in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens", "pp_size"):
            if getattr(self, name) <= 0:
                raise ProfileError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_input_len > self.max_seq_len:
            raise ProfileError(f"max_input_len {self.max_input_len} exceeds max_seq_len {self.max_seq_len}")
        if self.tp_size is not None and (self.tp_size <= 0 or self.tp_size & (self.tp_size - 1)):
            raise ProfileError(f"tp_size must be a power of two, got {self.tp_size}")
        if (self.tp_size or 1) * self.pp_size > self.gpus_per_node:
            raise ProfileError(f"tp_size × pp_size = {(self.tp_size or 1) * self.pp_size} exceeds the "
                               f"{self.gpus_per_node} GPUs of a {self.instance_type}")
        if not 1 <= self.max_beam_width <= MAX_BEAM_WIDTH:
            raise ProfileError(f"max_beam_width must be between 1 and {MAX_BEAM_WIDTH}, got {self.max_beam_width}")
        if not 0.0 < self.kv_cache_free_gpu_mem_fraction <= 1.0:
            raise ProfileError("kv_cache_free_gpu_mem_fraction must be in (0, 1]")
        self._validate_lora()

    def _validate_lora(self) -> None:
        from engines.lora_plan import target_modules

        if self.max_loras < 0 or self.max_lora_rank <= 0:
            raise ProfileError("max_loras must be >= 0 and max_lora_rank positive")
        if not self.max_loras:
            return
        try:
            target_modules(self.lora_target_modules)
        except ValueError as exc:
            raise ProfileError(str(exc)) from None
        if self.dtype != "float16":
            raise ProfileError(
                f"LoRA needs --dtype float16: the backend's lora_weights input is FP16 and TensorRT-LLM requires "
                f"adapter weights in the engine's dtype (this profile builds {self.dtype})")

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, BuildProfile] = {
    profile.name: profile
    for profile in (
        BuildProfile("a100-40gb", A100_40GB, "p4d.24xlarge", gpus_per_node=8, max_batch_size=64,
                     max_num_tokens=8192),
        BuildProfile("a100-80gb", A100_80GB, "p4de.24xlarge", gpus_per_node=8, max_batch_size=128,
                     max_num_tokens=8192),
        BuildProfile("h100-80gb", H100_80GB, "p5.48xlarge", gpus_per_node=8, max_batch_size=128,
                     max_num_tokens=8192, dtype="bfloat16"),
    )
}


def get_profile(name: str, **overrides) -> BuildProfile:
    if name not in PROFILES:
        raise ProfileError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}")
    return PROFILES[name].with_overrides(**overrides)
