"""How requests are released: a closed loop at fixed concurrency, or an open loop with Poisson arrivals.

Both are bounded by the number of requests and by a duration: once the duration is over no new request
starts, and those in flight are allowed to finish (each within its own timeout).
"""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from benchmarks.client import send
from benchmarks.records import RequestRecord
from benchmarks.targets import Target
from benchmarks.workload import BenchRequest


@dataclass(frozen=True)
class LoadPoint:
    mode: str        # "concurrency" (closed loop) or "rate" (open loop, requests per second)
    value: float

    @property
    def label(self) -> str:
        return f"c={self.value:g}" if self.mode == "concurrency" else f"{self.value:g} req/s"


@dataclass(frozen=True)
class Limits:
    duration: float = 600.0          # seconds after which no new request starts
    request_timeout: float = 300.0


@dataclass
class RunResult:
    target: str
    point: LoadPoint
    wall: float                      # seconds from the start of the run to the end of its last request
    records: list[RequestRecord]


async def run_point(target: Target, point: LoadPoint, requests: list[BenchRequest], seed: int, limits: Limits,
                    on_done: Callable[[RequestRecord], None] = lambda record: None) -> RunResult:
    connections = int(point.value) if point.mode == "concurrency" else None
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=connections, max_keepalive_connections=None),
                                 timeout=httpx.Timeout(limits.request_timeout, connect=10.0),
                                 trust_env=False) as client:
        t0 = time.perf_counter()

        async def one(request: BenchRequest) -> RequestRecord:
            record = await send(client, target, request, t0, limits.request_timeout)
            on_done(record)
            return record

        if point.mode == "concurrency":
            records = await _closed_loop(one, requests, int(point.value), t0 + limits.duration)
        else:
            records = await _open_loop(one, requests, poisson_schedule(len(requests), point.value, seed),
                                       limits.duration)
        wall = time.perf_counter() - t0
    return RunResult(target.name, point, wall, sorted(records, key=lambda r: r.send_time))


async def _closed_loop(one, requests: list[BenchRequest], concurrency: int, deadline: float) -> list[RequestRecord]:
    queue = iter(requests)
    records: list[RequestRecord] = []

    async def user() -> None:
        for request in queue:
            if time.perf_counter() >= deadline:
                return
            records.append(await one(request))

    await asyncio.gather(*(user() for _ in range(max(1, concurrency))))
    return records


async def _open_loop(one, requests: list[BenchRequest], arrivals: list[float], duration: float) -> list[RequestRecord]:
    start = time.perf_counter()
    tasks = []
    for request, arrival in zip(requests, arrivals, strict=True):
        if arrival >= duration:
            break
        await asyncio.sleep(max(0.0, start + arrival - time.perf_counter()))
        tasks.append(asyncio.create_task(one(request)))
    return list(await asyncio.gather(*tasks))


def poisson_schedule(count: int, rate: float, seed: int) -> list[float]:
    """Arrival offsets in seconds of a Poisson process at `rate` requests/s; the first request goes at once."""
    if rate <= 0:
        raise ValueError(f"request rate must be positive, got {rate}")
    rng = random.Random(seed)
    times, now = [], 0.0
    for _ in range(count):
        times.append(now)
        now += rng.expovariate(rate)
    return times
