"""Fewer intra-op threads for the CPU's small steps.

A decode step of one or a few sequences is a chain of ~400 small operators, each a few microseconds to a
fraction of a millisecond: spread over two cores, every one of them ends in an OpenMP barrier, and on a shared
machine (the gateway, tritonserver and other work on the same cores) that barrier waits for a descheduled
thread. One thread runs such steps faster there (benchmarks/results/cpu_quantized_smollm2/NOTE.md); prefills and
large batches keep every thread, where the work per operator pays for the split.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def step_threads(tokens: int, small_step_tokens: int, small_step_threads: int):
    """Run a step of `tokens` tokens with `small_step_threads` threads when it is small (0: no change)."""
    full = torch.get_num_threads()
    if small_step_threads <= 0 or tokens > small_step_tokens or full <= small_step_threads:
        yield
        return
    torch.set_num_threads(small_step_threads)
    try:
        yield
    finally:
        torch.set_num_threads(full)
