"""The constrained-decoding benchmark runs end to end on the CPU demo model and records what it measured."""
from __future__ import annotations

import json

from benchmarks import grammar_bench


def test_grammar_bench_records_ratio_compile_time_and_hits(tmp_path):
    grammar_bench.main(["--demo", "--device", "cpu", "--requests", "3", "--prompt-len", "8", "--output-len", "6",
                        "--schemas", "2", "--temperatures", "1.0", "--timeline", "--tag", "test",
                        "--out-dir", str(tmp_path)])
    result = json.loads((tmp_path / "grammar_test.json").read_text())
    [case] = result["cases"]
    # every request, constrained or not, ran to its length: the two sides batch alike
    assert case["unconstrained"]["min_tokens"] == case["constrained_warm_cache"]["min_tokens"] == 6
    assert case["grammar"]["compiled"] == 2 and case["grammar"]["cache_hits"] == 4
    assert 0 < case["ratio_warm"] and case["grammar"]["compile_seconds_per_grammar"] > 0
    warm = case["constrained_warm_cache"]
    assert warm["rows_per_fill"] == 3 and warm["host_fill_ms_per_step"] > 0 and warm["host_advance_ms_per_step"] > 0
    assert "| T=1.0 |" in (tmp_path / "grammar_test.md").read_text()
    # --timeline: the engine's steps timed on both sides (no pipelined launches on the CPU: whole steps)
    for side in ("unconstrained", "constrained_warm_cache"):
        assert case[side]["timeline"]["host"]["step -> step"]["count"] >= 5  # 6 steps
    assert "| host | step -> step |" in (tmp_path / "grammar_test.md").read_text()
