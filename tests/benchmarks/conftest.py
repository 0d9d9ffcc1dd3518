"""Calibration targets on loopback, and a helper that runs `ingot bench run` and reads its report."""
from __future__ import annotations

import json
import math
import socket
from contextlib import ExitStack
from pathlib import Path

import pytest

from benchmarks.calibration import create_app, serve_in_thread
from benchmarks.cli import main as bench_main


class CalibrationTargets:
    """Call with a `Pace`: starts that calibration server on a free port and returns its base URL.
    `timings(url)` gives that server's own record of each stream: [arrival, token 0 sent, token 1 sent, ...]."""

    def __init__(self, stack: ExitStack):
        self._stack, self._apps = stack, {}

    def __call__(self, pace) -> str:
        app = create_app(pace)
        url = self._stack.enter_context(serve_in_thread(app))
        self._apps[url] = app
        return url

    def timings(self, url: str) -> list[list[float]]:
        return self._apps[url].state.timings


@pytest.fixture
def calibration_target():
    with ExitStack() as stack:
        yield CalibrationTargets(stack)


@pytest.fixture
def closed_port() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def run_bench(tmp_path):
    """Call with CLI arguments after `run`: returns (exit code, report dict, output folder)."""
    def run(*args: str) -> tuple[int, dict, Path]:
        out = tmp_path / f"report-{len(list(tmp_path.iterdir()))}"
        code = bench_main(["run", *args, "--out", str(out), "--quiet"])
        report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
        return code, report, out
    return run


@pytest.fixture
def assert_consistent():
    return _assert_consistent


def _assert_consistent(report: dict, output_tokens: int | None = None) -> None:
    """Every metric present, token counts from the server's usage, TTFT ≤ E2E, throughput = tokens / wall."""
    for entry in report["runs"]:
        summary, records = entry["summary"], entry["records"]
        ok = [r for r in records if r["error"] is None]
        for record in ok:
            assert record["usage_reported"], record
            if output_tokens is not None:
                assert record["output_tokens"] == output_tokens
            assert 0 <= record["ttft"] <= record["e2e"]
            assert record["first_token_time"] == record["chunk_times"][0]
            assert record["chunk_times"] == sorted(record["chunk_times"])
            assert record["end_time"] <= entry["summary"]["wall_s"]
        assert summary["ok"] == len(ok) and summary["requests"] == len(records)
        assert summary["output_tokens"] == sum(r["output_tokens"] for r in ok)
        assert math.isclose(summary["output_throughput"], summary["output_tokens"] / summary["wall_s"])
        assert math.isclose(summary["request_throughput"], summary["ok"] / summary["wall_s"])
        if ok:
            for metric in ("ttft", "itl", "tpot", "e2e", "decode_speed"):
                assert all(summary[metric][key] is not None for key in ("mean", "p50", "p90", "p99")), metric
            assert summary["ttft"]["p50"] <= summary["e2e"]["p50"]
