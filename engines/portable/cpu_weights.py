"""Weight-only int8 and int4 projections for bfloat16 decoding on the CPU.

A decode step of a small model on a CPU is spent reading weights: each projection is a matrix-vector
product per sequence, and bfloat16 weights are two bytes each. `torch.ops.aten._weight_int8pack_mm` reads
one byte per weight (int8, one scale per output channel) and, for one to a few rows, ran 2-5x faster than
the bfloat16 `F.linear` of the same shapes on this project's 2-core AVX-512 machine
(benchmarks/results/cpu_quantized_smollm2/NOTE.md). It costs time linear in the rows, though: from ~8 rows on
(prefills, large decode batches) the bfloat16 GEMM is faster, so the dense weight is kept for those steps.
The cost is memory, one more byte per projection weight; the gain is on the steps a user waits on token by
token.

Weights that already lie on a 4-bit grid of groups of 32 (a checkpoint dequantized from GGUF Q4_1, like the
default model's: each group's minimum is code 0, its maximum code 15) are held as int4 instead
(`_weight_int4pack_mm_for_cpu`): the grid is recovered exactly, only its scales and offsets are rounded to
bfloat16, so the copy is ~4x closer to the checkpoint than per-channel int8 (relative RMS error 0.0019 vs
0.0079 on SmolLM2, bfloat16 itself 0.0014) and a decode step is ~25% faster still.

Only bfloat16 gets it: with float32 activations these kernels have no fast path, and float32 is the
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


@dataclass
class Int4Weight:
    """A projection whose weights lie on a 4-bit grid per group of 32 inputs: dense for many rows, int4 for few."""

    dense: torch.Tensor  # [out, in] bfloat16
    packed: torch.Tensor  # _convert_weight_to_int4pack_for_cpu of the codes
    scales_and_zeros: torch.Tensor  # [in / 32, out, 2] bfloat16: w = (code - 8) * scale + zero
    max_rows: int

    @property
    def shape(self) -> torch.Size:
        return self.dense.shape


GROUP = 32


def four_bit_grid(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(codes [out, in] int32 in 0..15, scale, minimum [out, in / 32]) when every group of 32 inputs holds
    values min + code * scale exactly (to float32 rounding); None otherwise."""
    out_features, in_features = weight.shape
    if in_features % GROUP:
        return None
    groups = weight.float().view(out_features, in_features // GROUP, GROUP)
    low = groups.amin(-1)
    scale = (groups.amax(-1) - low) / 15
    safe = scale.clamp(min=torch.finfo(torch.float32).tiny)
    codes = torch.round((groups - low[..., None]) / safe[..., None]).clamp(0, 15)
    error = (codes * scale[..., None] + low[..., None] - groups).abs()
    if (error > 1e-3 * scale[..., None] + 1e-12).any():
        return None
    return codes.to(torch.int32).view(out_features, in_features), scale, low


def quantize_int4(grid: tuple[torch.Tensor, torch.Tensor, torch.Tensor], dense: torch.Tensor,
                  max_rows: int) -> Int4Weight:
    codes, scale, low = grid
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    scales_and_zeros = torch.stack([scale.t(), (low + 8 * scale).t()], dim=-1).to(torch.bfloat16).contiguous()
    return Int4Weight(dense, packed, scales_and_zeros, max_rows)


def pack(weight: torch.Tensor, dense: torch.Tensor, max_rows: int) -> Int4Weight | Int8Weight:
    """int4 for weights already on a 4-bit group grid, int8 otherwise."""
    grid = four_bit_grid(weight)
    return quantize(weight, dense, max_rows) if grid is None else quantize_int4(grid, dense, max_rows)


def quantize(weight: torch.Tensor, dense: torch.Tensor, max_rows: int) -> Int8Weight:
    """Symmetric per-output-channel int8 of `weight` (any float dtype, ideally the checkpoint's own precision);
    `dense` is the copy the engine computes with otherwise."""
    source = weight.float()
    scale = (source.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(source / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
    return Int8Weight(dense, q, scale.to(torch.bfloat16).contiguous(), max_rows)


def linear(x: torch.Tensor, weight: torch.Tensor | Int8Weight | Int4Weight) -> torch.Tensor:
    kind = type(weight)
    if kind is torch.Tensor or kind is torch.nn.Parameter:
        return F.linear(x, weight)
    if x.shape[0] > weight.max_rows:
        return F.linear(x, weight.dense)
    if kind is Int8Weight:
        return torch.ops.aten._weight_int8pack_mm(x, weight.q, weight.scale)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, weight.packed, GROUP, weight.scales_and_zeros)


def wants_int8(cpu_weights: str, device: str, dtype: torch.dtype) -> bool:
    """Whether the engine keeps int8 copies of its projections."""
    if cpu_weights not in CPU_WEIGHT_FORMATS:
        raise ValueError(f"cpu_weights must be one of {', '.join(CPU_WEIGHT_FORMATS)}, got {cpu_weights!r}")
    on_cpu_bf16 = device == "cpu" and dtype == torch.bfloat16
    if cpu_weights == "int8" and not on_cpu_bf16:
        raise ValueError(f"cpu_weights=int8 needs bfloat16 on the CPU (got {dtype} on {device})")
    return cpu_weights != "dense" and on_cpu_bf16
