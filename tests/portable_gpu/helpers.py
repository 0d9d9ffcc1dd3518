"""Random paged-cache fixtures shared by the kernel tests."""
from __future__ import annotations

import math

import torch

BLOCK_SIZE = 16


def paged_cache(lengths: list[int], kv_heads: int, head_dim: int, dtype: torch.dtype, device: str,
                generator: torch.Generator, spare_blocks: int = 5):
    """K/V caches with random contents and block tables that scatter each sequence over random
    blocks, so a kernel that ignores the table cannot pass."""
    max_blocks = max(math.ceil(n / BLOCK_SIZE) for n in lengths)
    num_blocks = len(lengths) * max_blocks + spare_blocks
    shape = (num_blocks, BLOCK_SIZE, kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=generator, device=device).to(dtype)
    v_cache = torch.randn(shape, generator=generator, device=device).to(dtype)
    order = torch.randperm(num_blocks, generator=generator, device=device)
    tables = order[: len(lengths) * max_blocks].view(len(lengths), max_blocks).to(torch.int32)
    lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    return k_cache, v_cache, tables, lens


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()
