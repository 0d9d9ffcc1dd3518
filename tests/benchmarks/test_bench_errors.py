"""Failures are data: unreachable targets, refused keys, HTTP 500 and broken streams are counted, not fatal."""
from __future__ import annotations

from benchmarks.calibration import Pace

QUICK = Pace(ttft=0.01, itl=0.005)
SMALL = ("--num-requests", "6", "--input-tokens", "4", "--output-tokens", "6")


def errors_of(report: dict, target: str) -> dict:
    totals: dict = {}
    for entry in report["runs"]:
        if entry["target"] == target:
            for kind, count in entry["summary"]["errors"].items():
                totals[kind] = totals.get(kind, 0) + count
    return totals


def test_unreachable_target_is_counted_beside_a_good_one(calibration_target, closed_port, run_bench, capsys):
    good = calibration_target(QUICK)
    code, report, _ = run_bench("--target", f"name=good,url={good}", "--target", f"name=down,url={closed_port}",
                                "--model", "calibration", *SMALL)

    assert code == 0
    assert errors_of(report, "down") == {"connect": 6}
    assert errors_of(report, "good") == {}
    assert "every request to down" in capsys.readouterr().err
    down = next(e for e in report["runs"] if e["target"] == "down")
    assert down["summary"]["output_throughput"] == 0 and down["summary"]["ttft"]["p50"] is None


def test_wrong_api_key_gives_401_errors(calibration_target, run_bench, monkeypatch):
    good = calibration_target(QUICK)
    locked = calibration_target(Pace(ttft=0.01, itl=0.005, api_key="right-key"))
    monkeypatch.setenv("BENCH_WRONG_KEY", "wrong-key")
    code, report, _ = run_bench("--target", f"name=good,url={good}",
                                "--target", f"name=locked,url={locked},api-key-env=BENCH_WRONG_KEY",
                                "--model", "calibration", *SMALL)

    assert code == 0
    assert errors_of(report, "locked") == {"http_401": 6}
    record = next(e for e in report["runs"] if e["target"] == "locked")["records"][0]
    assert record["status"] == 401 and "invalid API key" in record["error_detail"]


def test_the_right_api_key_is_sent(calibration_target, run_bench, monkeypatch):
    locked = calibration_target(Pace(ttft=0.01, itl=0.005, api_key="right-key"))
    monkeypatch.setenv("OPENAI_API_KEY", "right-key")
    code, report, _ = run_bench("--target", locked, *SMALL)

    assert code == 0 and errors_of(report, "target1") == {}


def test_server_errors_and_broken_streams_are_counted(calibration_target, run_bench, assert_consistent):
    flaky = calibration_target(Pace(ttft=0.01, itl=0.005, fail_every=3, break_every=2, break_after=2))
    code, report, out = run_bench("--target", f"name=flaky,url={flaky}", "--concurrency", "1,2", *SMALL)

    assert code == 0
    for entry in report["runs"]:
        # the server numbers requests as they arrive: in every six, two get HTTP 500 and two break mid-stream
        assert entry["summary"]["errors"] == {"http_500": 2, "stream_broken": 2}
        assert entry["summary"]["ok"] == 2
        broken = [r for r in entry["records"] if r["error"] == "stream_broken"]
        assert all(len(r["chunk_times"]) == 2 for r in broken)
    assert_consistent(report, output_tokens=6)
    assert "http_500 2, stream_broken 2" in (out / "summary.md").read_text()


def test_tgi_broken_stream_is_counted(calibration_target, run_bench):
    flaky = calibration_target(Pace(ttft=0.01, itl=0.005, break_every=2))
    code, report, _ = run_bench("--target", f"url={flaky},api=tgi", *SMALL)

    assert code == 0 and errors_of(report, "target1") == {"stream_broken": 3}


def test_a_run_where_every_request_failed_exits_non_zero(closed_port, run_bench, capsys):
    code, report, out = run_bench("--target", closed_port, "--model", "m", "--concurrency", "1,2", *SMALL)

    assert code == 1
    assert "every request failed (connect 12)" in capsys.readouterr().err
    assert (out / "summary.md").exists() and (out / "frontier.png").exists()
    assert errors_of(report, "target1") == {"connect": 12}


def test_bad_arguments_exit_2_with_a_message(run_bench, tmp_path, capsys):
    code, _, _ = run_bench("--target", "url=http://127.0.0.1:1,api=grpc")
    assert code == 2 and "api must be one of" in capsys.readouterr().err

    missing = tmp_path / "nowhere"
    code, _, _ = run_bench("--target", "http://127.0.0.1:1", "--tokenizer", str(missing))
    assert code == 2 and "no tokenizer.json" in capsys.readouterr().err
