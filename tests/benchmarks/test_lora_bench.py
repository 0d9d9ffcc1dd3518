"""The LoRA cost benchmark runs end to end on the CPU with the tiny shape (its GPU figures come from the H100)."""
from __future__ import annotations

import json

from benchmarks.lora_bench import main


def test_lora_bench_writes_both_loads_and_their_ratios(tmp_path):
    out = tmp_path / "out"
    assert main(["--shape", "tiny", "--device", "cpu", "--adapters", "2", "--rank", "4", "--requests", "4",
                 "--prompt-len", "12", "--output-len", "6", "--batch1-tokens", "6", "--work-dir", str(tmp_path / "w"),
                 "--out-dir", str(out), "--tag", "cpu-test"]) == 0
    report = json.loads((out / "lora_cpu-test.json").read_text())
    results = report["results"]
    for key in ("base_batch1_tok_s", "lora_batch1_tok_s", "base_workload_tok_s", "lora_workload_tok_s"):
        assert results[key] > 0
    assert results["workload_ratio"] == results["lora_workload_tok_s"] / results["base_workload_tok_s"]
    assert "| batch-1 decode, one adapter |" in (out / "lora_cpu-test.md").read_text()
