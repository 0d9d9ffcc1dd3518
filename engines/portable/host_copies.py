"""Host data to the device without waiting for the GPU.

A copy from pageable host memory (`torch.tensor(values, device="cuda")`, `tensor.to("cuda")`) makes the
host wait for every kernel already queued on the stream. The pipelined decode queues the sampler behind a
forward that is still running, so its small inputs are staged in pinned memory and copied asynchronously;
PyTorch keeps the pinned source alive until the copy has run. On the CPU they are plain tensors.
"""
from __future__ import annotations

import torch


def to_device(values, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`values` (a list, or a CPU tensor) as a tensor on `device`; its dtype is `dtype`, else inferred."""
    host = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    if torch.device(device).type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
