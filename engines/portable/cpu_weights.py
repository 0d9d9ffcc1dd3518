"""Weight-only int8 projections for bfloat16 decoding on the CPU.

A decode step of a small model on a CPU is spent reading weights: each projection is a matrix-vector
product per sequence, and bfloat16 weights are two bytes each. `torch.ops.aten._weight_int8pack_mm` reads
one byte per weight (int8, one scale per output channel) and, for one to a few rows, ran 2-5x faster than
the bfloat16 `F.linear` of the same shapes on this project's 2-core AVX-512 machine
(benchmarks/results/cpu_int8_smollm2/NOTE.md). It costs time linear in the rows, though: from ~8 rows on
(prefills, large decode batches) the bfloat16 GEMM is faster, so the dense weight is kept for those steps.
The cost is memory, one more byte per projection weight; the gain is on the steps a user waits on token by
token.

Only bfloat16 gets it: with float32 activations the int8 kernel has no fast path, and float32 is the
reference precision the fidelity tests pin.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# "auto" turns the int8 copies on for bfloat16 on the CPU; "int8" asks for them (bfloat16 on the CPU only);
# "dense" never makes them.
CPU_WEIGHT_FORMATS = ("auto", "int8", "dense")


@dataclass
class Int8Weight:
    """A projection [out, in] held twice: dense for many rows, int8 with per-channel scales for few."""

    dense: torch.Tensor  # [out, in] bfloat16
    q: torch.Tensor  # [out, in] int8
    scale: torch.Tensor  # [out] bfloat16
    max_rows: int  # up to this many rows go through the int8 kernel

    @property
    def shape(self) -> torch.Size:
        return self.dense.shape


def quantize(weight: torch.Tensor, dense: torch.Tensor, max_rows: int) -> Int8Weight:
    """Symmetric per-output-channel int8 of `weight` (any float dtype, ideally the checkpoint's own precision);
    `dense` is the copy the engine computes with otherwise."""
    source = weight.float()
    scale = (source.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(source / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
    return Int8Weight(dense, q, scale.to(torch.bfloat16).contiguous(), max_rows)


def linear(x: torch.Tensor, weight: torch.Tensor | Int8Weight) -> torch.Tensor:
    if type(weight) is not Int8Weight:
        return F.linear(x, weight)
    if x.shape[0] <= weight.max_rows:
        return torch.ops.aten._weight_int8pack_mm(x, weight.q, weight.scale)
    return F.linear(x, weight.dense)


def wants_int8(cpu_weights: str, device: str, dtype: torch.dtype) -> bool:
    """Whether the engine keeps int8 copies of its projections."""
    if cpu_weights not in CPU_WEIGHT_FORMATS:
        raise ValueError(f"cpu_weights must be one of {', '.join(CPU_WEIGHT_FORMATS)}, got {cpu_weights!r}")
    on_cpu_bf16 = device == "cpu" and dtype == torch.bfloat16
    if cpu_weights == "int8" and not on_cpu_bf16:
        raise ValueError(f"cpu_weights=int8 needs bfloat16 on the CPU (got {dtype} on {device})")
    return cpu_weights != "dense" and on_cpu_bf16
