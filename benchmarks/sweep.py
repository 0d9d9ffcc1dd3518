"""A whole benchmark: every target at every load point, interleaved, on one fixed workload.

With two or more targets the order alternates from one point to the next (A, B, then B, A, ...), so a
slow drift of the machine does not favour whichever target always runs first. Every target sees the same
requests and, in open loop, the same arrival times. With `fresh_prompts` each load point gets its own
slice of the workload, so a server that caches prefixes never sees a prompt twice.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import httpx

from benchmarks.client import resolve_model
from benchmarks.load import Limits, LoadPoint, RunResult, run_point
from benchmarks.progress import SweepProgress
from benchmarks.targets import Target
from benchmarks.workload import BenchRequest


@dataclass(frozen=True)
class Sweep:
    targets: list[Target]
    points: list[LoadPoint]
    requests: list[BenchRequest]
    seed: int = 0
    limits: Limits = Limits()
    fresh_prompts: bool = False      # requests holds one slice per point, in point order

    def requests_at(self, number: int) -> list[BenchRequest]:
        if not self.fresh_prompts:
            return self.requests
        size = len(self.requests) // len(self.points)
        return self.requests[number * size:(number + 1) * size]


async def run_sweep(sweep: Sweep, progress: SweepProgress) -> tuple[list[Target], list[RunResult]]:
    targets = [await _with_model(target) for target in sweep.targets]
    results = []
    for number, point in enumerate(sweep.points):
        order = targets if number % 2 == 0 else list(reversed(targets))
        for target in order:
            progress.start_run(f"{target.name} {point.label}", len(sweep.requests_at(number)))
            result = await run_point(target, point, sweep.requests_at(number), sweep.seed, sweep.limits,
                                     progress.request_done)
            progress.finish_run()
            results.append(result)
    return targets, results


async def _with_model(target: Target) -> Target:
    if target.api == "tgi" or target.model:
        return target
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
        return replace(target, model=await resolve_model(client, target))
