"""The benchmark measured against servers whose pace is known: TTFT 50 ms, then one token every 20 ms.

The figures are checked against the calibration server's own record of when each token left (same process,
same clock), not against the nominal pace: on a busy machine the server runs late, and a benchmark that
reports that lateness faithfully is right.
"""
from __future__ import annotations

import statistics

import matplotlib.image

from benchmarks.calibration import Pace

PACE = Pace(ttft=0.05, itl=0.02)   # 50 tok/s per user
SMALL = ("--num-requests", "4", "--input-tokens", "12", "--output-tokens", "12", "--server", "ingot")
REQUESTS = 4
TRANSPORT_SLACK_S = 0.03   # from the server's send to the client's read, loopback on a loaded machine


def served(timings: list[list[float]]) -> tuple[float, float]:
    """The server-side (TTFT p50, time per output token p50) of these streams."""
    ttft = statistics.median(t[1] - t[0] for t in timings)
    tpot = statistics.median((t[-1] - t[1]) / (len(t) - 2) for t in timings)
    return ttft, tpot


def assert_on_pace(summary: dict, timings: list[list[float]]) -> None:
    ttft, tpot = served(timings)
    # The client's interval holds the server's: it sends before the server's arrival stamp and reads after
    # the send stamp, so its TTFT can only be longer, by the transport time.
    assert ttft <= summary["ttft"]["p50"] <= ttft + TRANSPORT_SLACK_S
    assert abs(summary["tpot"]["p50"] - tpot) <= 0.15 * tpot
    assert abs(summary["decode_speed"]["p50"] - 1 / tpot) <= 0.15 / tpot


def per_point(timings: list[list[float]], point: int) -> list[list[float]]:
    """The streams of the `point`-th load point run against one target (points run one after another)."""
    return timings[point * REQUESTS:(point + 1) * REQUESTS]


def test_closed_loop_sweep_measures_the_known_pace(calibration_target, run_bench, assert_consistent):
    url = calibration_target(PACE)
    code, report, out = run_bench("--target", f"name=calibration,url={url}", "--concurrency", "1,2", *SMALL)

    assert code == 0
    assert [(e["point"]["mode"], e["point"]["value"]) for e in report["runs"]] == [("concurrency", 1),
                                                                                   ("concurrency", 2)]
    assert_consistent(report, output_tokens=12)
    for point, entry in enumerate(report["runs"]):
        assert entry["summary"]["ok"] == 4 and entry["summary"]["errors"] == {}
        assert all(r["prompt_tokens"] == 12 for r in entry["records"])   # the server's usage: 12 words
        assert_on_pace(entry["summary"], per_point(calibration_target.timings(url), point))
    assert report["runs"][0]["records"][0]["max_tokens"] == 12


def test_open_loop_poisson_run(calibration_target, run_bench, assert_consistent):
    url = calibration_target(PACE)
    code, report, _ = run_bench("--target", url, "--rate", "20", "--seed", "7", *SMALL)

    assert code == 0
    (entry,) = report["runs"]
    assert entry["point"] == {"mode": "rate", "value": 20.0, "label": "20 req/s"}
    sends = [r["send_time"] for r in entry["records"]]
    assert sends == sorted(sends) and len(sends) == 4
    assert_consistent(report, output_tokens=12)
    assert_on_pace(entry["summary"], calibration_target.timings(url))


def test_completions_and_tgi_shapes(calibration_target, run_bench, assert_consistent):
    url = calibration_target(PACE)
    code, report, _ = run_bench("--target", f"name=completions,url={url}/v1,api=completions",
                                "--target", f"name=tgi,url={url},api=tgi,server=tgi", *SMALL)

    assert code == 0
    assert_consistent(report, output_tokens=12)
    for point, entry in enumerate(report["runs"]):   # both targets are the same server, one after the other
        assert_on_pace(entry["summary"], per_point(calibration_target.timings(url), point))
        assert len(entry["records"][0]["chunk_times"]) == 12


def test_report_files_are_written(calibration_target, run_bench):
    url = calibration_target(PACE)
    code, report, out = run_bench("--target", f"name=calibration,url={url}", "--concurrency", "1,2", *SMALL)

    assert code == 0
    summary = (out / "summary.md").read_text()
    assert "| calibration | c=1 | 4/4 | 0 |" in summary and "## Goodput" in summary
    for name in ("frontier.png", "ttft.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(out / name).shape
        assert height > 100 and width > 100
    assert set(report) >= {"settings", "targets", "runs", "goodput", "speed_limits"}
    assert "ratios" not in report


def test_goodput_picks_the_best_point_above_the_limit(calibration_target, run_bench):
    url = calibration_target(PACE)
    code, report, _ = run_bench("--target", f"name=calibration,url={url}", "--concurrency", "1,2",
                                "--goodput-limits", "40,60", *SMALL)

    assert code == 0
    best = max(report["runs"], key=lambda e: e["summary"]["output_throughput"])["summary"]
    assert report["goodput"]["calibration"]["40"]["p50"]["output_throughput"] == best["output_throughput"]
    assert report["goodput"]["calibration"]["40"]["p90"]["point"] == best["point"]
    assert report["goodput"]["calibration"]["60"] == {"p50": None, "p90": None}   # 50 tok/s never reaches 60


def test_two_targets_interleave_and_produce_a_ratio_table(calibration_target, run_bench, assert_consistent):
    fast, slow = calibration_target(PACE), calibration_target(Pace(ttft=0.05, itl=0.04))
    code, report, out = run_bench("--target", f"name=fast,url={fast}", "--target", f"name=slow,url={slow}",
                                  "--concurrency", "1,2", "--seed", "3", *SMALL)

    assert code == 0
    assert [(e["target"], e["point"]["label"]) for e in report["runs"]] == [
        ("fast", "c=1"), ("slow", "c=1"), ("slow", "c=2"), ("fast", "c=2")]
    prompts = {e["target"]: [r["prompt_tokens"] for r in e["records"]] for e in report["runs"]}
    assert prompts["fast"] == prompts["slow"]
    assert_consistent(report, output_tokens=12)
    ratios = report["ratios"]
    assert ratios["baseline"] == "fast" and [row["point"] for row in ratios["points"]] == ["c=1", "c=2"]
    for point, row in enumerate(ratios["points"]):   # about 25 tok/s against 50 tok/s, as the servers really ran
        (_, fast_tpot), (_, slow_tpot) = (served(per_point(calibration_target.timings(url), point))
                                          for url in (fast, slow))
        assert abs(row["decode_speed_p50"] - fast_tpot / slow_tpot) <= 0.15 * fast_tpot / slow_tpot
    assert "## Ratios to fast" in (out / "summary.md").read_text()


def test_fresh_prompts_give_each_point_its_own_requests(calibration_target, run_bench, assert_consistent):
    a, b = calibration_target(PACE), calibration_target(PACE)
    code, report, _ = run_bench("--target", f"name=a,url={a}", "--target", f"name=b,url={b}", "--concurrency", "1,2",
                                "--fresh-prompts", *SMALL)

    assert code == 0
    indexes = {(e["target"], e["point"]["label"]): sorted(r["index"] for r in e["records"]) for e in report["runs"]}
    assert indexes[("a", "c=1")] == indexes[("b", "c=1")] == [0, 1, 2, 3]
    assert indexes[("a", "c=2")] == indexes[("b", "c=2")] == [4, 5, 6, 7]
    assert report["settings"]["fresh_prompts"] is True
    assert_consistent(report, output_tokens=12)
