"""The stack-vs-engine comparison runs end to end on CPU on the demo model (its figures come from the GPU)."""
from __future__ import annotations

import json
import os

import pytest

from benchmarks import stack_vs_engine

pytestmark = pytest.mark.e2e


def test_a_short_cpu_run_compares_both_sides_and_reports(tmp_path, demo_checkpoints):
    out = tmp_path / "out"
    code = stack_vs_engine.main(["run", "--model", "tiny", "--checkpoint", str(demo_checkpoints["llama"]),
                                 "--device", "cpu", "--users", "1,2", "--input-tokens", "8", "--output-tokens", "4",
                                 "--requests-per-user", "1", "--duration", "2", "--max-num-seqs", "8",
                                 "--stub-stats", "0.5", "--out", str(out), "--work-dir", str(tmp_path / "work")])
    assert code == 0
    result = json.loads((out / "tiny.json").read_text())
    assert [p["users"] for p in result["points"]] == [1, 2]
    for point in result["points"]:
        assert point["engine_tok_s"] > 0 and point["stack_tok_s"] > 0
        assert point["ratio"] == pytest.approx(point["stack_tok_s"] / point["engine_tok_s"], rel=0.01)
        assert point["engine"]["requests"] >= point["users"] and point["stack"]["requests"] >= point["users"]
        assert not point["engine"]["errors"] and not point["stack"]["errors"]
        assert point["stack"]["ttft_p50_ms"] > 0 and point["engine"]["ttft_p50_ms"] > 0
    # the stub's timing lines, taken from Triton's log (engines/triton/stub_stats.py)
    stats = (out / "tiny_stub_stats.log").read_text().splitlines()
    assert stats and all("steps" in line and "requests in" in line for line in stats)
    assert any(" 0 steps" not in line for line in stats)
    assert "INGOT_ENGINE_STATS_S" not in os.environ
    assert set(result["goodput"]) == {"stack", "engine"} and set(result["goodput"]["stack"]) == {"60", "80"}
    stack_vs_engine.main(["report", str(out / "tiny.json"), "--out", str(tmp_path / "merged" / "sve")])
    merged = json.loads((tmp_path / "merged" / "sve.json").read_text())
    assert list(merged) == ["tiny"]
    assert (tmp_path / "merged" / "sve.png").stat().st_size > 0
    assert "stack ÷ engine" in (tmp_path / "merged" / "sve.md").read_text()
