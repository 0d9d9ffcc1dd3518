"""From raw request records to the numbers a benchmark reports, and goodput across a sweep.

Latencies (TTFT, ITL, TPOT, E2E) are summarized by mean and p50/p90/p99 where p90 is the value 90% of
requests stay at or under. Per-user decode speed is higher-is-better, so its p90 is the speed that 90% of
requests reach or exceed (the 10th percentile of the speeds): "p90 ≥ 60 tok/s" then means nine users in
ten decode at 60 tok/s or faster. Throughputs are tokens (or requests) of successful requests divided by
the wall time of the run.
"""
from __future__ import annotations

from collections import Counter
from statistics import fmean

from benchmarks.load import RunResult

PERCENTILES = (50, 90, 99)
DEFAULT_SPEED_LIMITS = (60.0, 80.0)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution(values: list[float], higher_is_better: bool = False) -> dict[str, float | None]:
    if not values:
        return {"mean": None, **{f"p{q}": None for q in PERCENTILES}}
    tail = {f"p{q}": percentile(values, 100 - q if higher_is_better else q) for q in PERCENTILES}
    return {"mean": fmean(values), **tail}


def summarize(run: RunResult) -> dict:
    ok = [r for r in run.records if r.ok]
    output_tokens = sum(r.output_tokens for r in ok)
    return {
        "requests": len(run.records),
        "ok": len(ok),
        "errors": dict(Counter(r.error for r in run.records if not r.ok)),
        "wall_s": run.wall,
        "input_tokens": sum(r.prompt_tokens or r.expected_prompt_tokens or 0 for r in ok),
        "output_tokens": output_tokens,
        "request_throughput": len(ok) / run.wall if run.wall > 0 else 0.0,
        "output_throughput": output_tokens / run.wall if run.wall > 0 else 0.0,
        "ttft": distribution(_present(r.ttft for r in ok)),
        "itl": distribution([gap for r in ok for gap in r.itls]),
        "tpot": distribution(_present(r.tpot for r in ok)),
        "e2e": distribution([r.e2e for r in ok]),
        "decode_speed": distribution(_present(r.decode_speed for r in ok), higher_is_better=True),
    }


def _present(values) -> list[float]:
    return [v for v in values if v is not None]


def goodput(summaries: list[dict], limits: tuple[float, ...] = DEFAULT_SPEED_LIMITS) -> dict[str, dict]:
    """For each speed limit: the largest output throughput among sweep points whose per-user decode speed
    at p50 (and, stricter, at p90) is at least the limit; None when no point qualifies.

    `summaries` are one target's sweep points, each a `summarize` result with its `point` label added.
    """
    result = {}
    for limit in limits:
        entry = {}
        for level in ("p50", "p90"):
            passing = [s for s in summaries if (s["decode_speed"][level] or 0.0) >= limit]
            best = max(passing, key=lambda s: s["output_throughput"], default=None)
            entry[level] = None if best is None else {"output_throughput": best["output_throughput"],
                                                      "request_throughput": best["request_throughput"],
                                                      "point": best["point"]}
        result[f"{limit:g}"] = entry
    return result

