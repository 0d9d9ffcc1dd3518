"""Where a pipelined decode step spends its time, on the host and on the device, for benchmarks.

The pipelined decode overlaps the host's work (reading tokens, advancing grammars, filling bitmasks,
queuing the sampler, launching the next step) with the device's forward; a step is slow either because
the device works longer or because it waits for the host. The timeline tells which: the engine marks the
host's phases (`mark`: a timestamp) and the device's (`mark_device`: a CUDA event recorded on the stream,
so its time is when the device got there). The time between two consecutive marks of one side is booked
to that pair of names; on the device, the time between the end of one piece of work and the start of the
next is time it waited for the host to queue it. Off by default: `NO_TIMELINE` ignores every mark.
"""
from __future__ import annotations

import time
from collections import defaultdict
from itertools import pairwise

import torch


class StepTimeline:
    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.host: list[tuple[str, float]] = []
        self.device: list[tuple[str, torch.cuda.Event]] = []

    def mark(self, name: str) -> None:
        self.host.append((name, time.perf_counter()))

    def mark_device(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.device.append((name, event))

    def summary(self) -> dict:
        """Per pair of consecutive marks ("a -> b"), on each side: how often, mean and total ms."""
        host = _booked((a, b, 1000 * (tb - ta)) for (a, ta), (b, tb) in pairwise(self.host))
        device = {}
        if self.device:
            torch.cuda.synchronize()
            device = _booked((a, b, ea.elapsed_time(eb)) for (a, ea), (b, eb) in pairwise(self.device))
        return {"host": host, "device": device}


def _booked(spans) -> dict:
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for start, end, ms in spans:
        entry = totals[f"{start} -> {end}"]
        entry[0] += 1
        entry[1] += ms
    return {pair: {"count": count, "mean_ms": total / count, "total_ms": total}
            for pair, (count, total) in sorted(totals.items(), key=lambda item: -item[1][1])}


class _NoTimeline:
    def mark(self, name: str) -> None:
        pass

    def mark_device(self, name: str) -> None:
        pass


NO_TIMELINE = _NoTimeline()
