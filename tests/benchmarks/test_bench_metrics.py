"""Per-request metrics, percentiles, goodput and the Poisson schedule, on hand-made numbers."""
from __future__ import annotations

import pytest

from benchmarks.load import LoadPoint, RunResult, poisson_schedule
from benchmarks.metrics import goodput, percentile, summarize
from benchmarks.records import RequestRecord


def record(send: float, first: float, end: float, tokens: int, error: str | None = None) -> RequestRecord:
    step = (end - first) / max(tokens - 1, 1)
    return RequestRecord(0, send, end, first, [first + k * step for k in range(tokens)], 10, tokens, True,
                         error=error)


def test_per_request_metrics():
    r = record(send=1.0, first=1.1, end=2.1, tokens=11)
    assert r.ttft == pytest.approx(0.1) and r.e2e == pytest.approx(1.1)
    assert r.decode_speed == pytest.approx(10.0) and r.tpot == pytest.approx(0.1)
    assert r.itls == pytest.approx([0.1] * 10)
    assert record(0, 0.1, 0.1, 1).decode_speed is None


def test_percentiles_interpolate_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [percentile(values, q) for q in (0, 50, 90, 100)] == pytest.approx([1.0, 3.0, 4.6, 5.0])


def test_summary_counts_only_successful_tokens_and_tail_speed():
    run = RunResult("t", LoadPoint("concurrency", 2), 4.0,
                    [record(0, 0.1, 1.1, 11), record(0, 0.2, 2.2, 11), record(0, 0.1, 0.2, 3, error="stream_broken")])
    s = summarize(run)
    assert s["ok"] == 2 and s["errors"] == {"stream_broken": 1}
    assert s["output_tokens"] == 22 and s["output_throughput"] == pytest.approx(5.5)
    assert s["request_throughput"] == pytest.approx(0.5)
    assert s["decode_speed"]["p50"] == pytest.approx(7.5)
    assert s["decode_speed"]["p90"] == pytest.approx(5.5)    # the speed 90% of requests reach: the slow tail


def test_goodput_is_the_best_throughput_meeting_the_speed_limit():
    def point(label, throughput, p50, p90):
        return {"point": label, "output_throughput": throughput, "request_throughput": throughput / 100,
                "decode_speed": {"p50": p50, "p90": p90}}

    sweep = [point("c=1", 100, 95, 90), point("c=4", 350, 82, 70), point("c=16", 900, 65, 50),
             point("c=64", 1500, 30, 10)]
    result = goodput(sweep, (60, 80))
    assert result["60"]["p50"]["point"] == "c=16" and result["60"]["p90"]["point"] == "c=4"
    assert result["80"]["p50"]["output_throughput"] == 350 and result["80"]["p90"]["point"] == "c=1"
    assert goodput(sweep, (100,))["100"] == {"p50": None, "p90": None}


def test_poisson_schedule_is_seeded_and_has_the_right_rate():
    times = poisson_schedule(2000, rate=10.0, seed=5)
    assert times == poisson_schedule(2000, rate=10.0, seed=5) != poisson_schedule(2000, rate=10.0, seed=6)
    assert times[0] == 0.0 and times == sorted(times)
    assert 1999 / times[-1] == pytest.approx(10.0, rel=0.1)
