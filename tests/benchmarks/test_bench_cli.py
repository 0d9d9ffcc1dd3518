"""The command line: `ingot bench` dispatch, the calibration server as its own process, printed summaries."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from engines.triton.launcher import free_port
from ingot_cli import main as ingot_main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def calibration_process():
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.cli", "calibrate", "--port", str(port),
                                "--ttft-ms", "20", "--itl-ms", "10"], cwd=ROOT, env=dict(os.environ),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1, trust_env=False).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()
        time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_ingot_bench_against_the_calibration_process(calibration_process, tmp_path, capsys):
    out = tmp_path / "report"
    code = ingot_main(["bench", "run", "--target", calibration_process, "--num-requests", "3",
                       "--output-tokens", "5", "--out", str(out)])

    assert code == 0
    printed = capsys.readouterr().out
    assert "# Benchmark: target1" in printed and f"report: {out}/report.json" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["command"].startswith("ingot bench run --target http://127.0.0.1:")
    assert report["targets"][0]["model"] == "calibration"
    assert report["runs"][0]["summary"]["ok"] == 3


def test_report_command_redraws_from_json(calibration_process, tmp_path, capsys):
    out = tmp_path / "report"
    assert ingot_main(["bench", "run", "--target", calibration_process, "--num-requests", "2",
                       "--output-tokens", "3", "--out", str(out), "--quiet"]) == 0
    (out / "summary.md").unlink()
    (out / "ttft.png").unlink()

    assert ingot_main(["bench", "report", str(out / "report.json")]) == 0
    assert (out / "summary.md").exists() and (out / "ttft.png").exists()
    assert "## Goodput" in capsys.readouterr().out
