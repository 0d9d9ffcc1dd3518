"""The stack overhead benchmark runs end to end on the demo model (briefly: it is measured in benchmarks/results)."""
from __future__ import annotations

import json

import pytest

from benchmarks import stack_overhead

pytestmark = pytest.mark.e2e


def test_a_short_run_reports_cpu_per_token_for_each_process(tmp_path):
    # CPU time is counted in clock ticks (10 ms): 384 streamed tokens cost the gateway several of them (~100 µs
    # a token), where 18 could cost it none (a fresh-clone run under load saw 0.0 s)
    code = stack_overhead.main(["--streams", "3", "--output-tokens", "64", "--requests-per-user", "2",
                                "--max-num-seqs", "8", "--out", str(tmp_path / "out"),
                                "--work-dir", str(tmp_path / "work")])
    assert code == 0
    result = json.loads((tmp_path / "out" / "stack_overhead.json").read_text())
    [point] = result["points"]
    assert point["streams"] == 3 and point["failed"] == 0 and point["tokens"] == 384
    assert point["gateway_cpu_s"] > 0 and point["triton_cpu_s"] >= point["stub_cpu_s"] > 0
    assert 0 < point["chunks_per_token"] <= 1
    # the stub's threads are told apart by their OS names: the engine loop, the sender, intake (main thread)
    assert {"engine", "sender", "intake"} <= set(point["stub_threads_cpu_s"])
    assert "sender_us_per_token" in point and "intake_us_per_request" in point
    assert "stack_us_per_token" in (tmp_path / "out" / "stack_overhead.md").read_text()
    comparison = tmp_path / "compare.md"
    stack_overhead.main(["--compare", str(tmp_path / "out" / "stack_overhead.json"),
                         str(tmp_path / "out" / "stack_overhead.json"), "--out", str(comparison)])
    assert comparison.read_text().count("| 3 |") == 4  # both versions in both tables
