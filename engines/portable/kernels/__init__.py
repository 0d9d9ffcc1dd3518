"""GPU kernels of the portable engine (Triton): paged decode attention, paged prefill attention, the
fused KV-cache write, and the fused elementwise parts of a layer (residual add + RMSNorm, SiLU * up,
rotary embedding + KV write), and a batch-1 GEMV. Plain-torch references live in `reference`.

Importing this package needs neither CUDA nor the `triton` package: the kernel modules load on
first use, so CPU-only installs can import the engine and check `available()`.
"""
from __future__ import annotations

import importlib
import importlib.util

_LAZY = {
    "paged_decode_attention": "paged_attention",
    "choose_num_splits": "paged_attention",
    "paged_prefill_attention": "prefill_attention",
    "gather_prefill_attention": "prefill_attention",
    "write_kv": "kv_cache",
    "add_rms_norm": "fused",
    "silu_mul": "fused",
    "rope_write_kv": "fused",
    "gemv": "matvec",
}

__all__ = ["available", "unavailable_reason", *_LAZY]


def unavailable_reason() -> str | None:
    """Why the kernels cannot run here, or None when they can."""
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def available() -> bool:
    return unavailable_reason() is None


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
