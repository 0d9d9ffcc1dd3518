"""`ingot bench` against the real stack: Triton with the portable engine and the gateway, demo model, CPU."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def test_tiny_sweep_through_the_gateway(ingot_stack, run_bench, assert_consistent, monkeypatch):
    monkeypatch.setenv("INGOT_BENCH_KEY", ingot_stack.api_key)
    code, report, out = run_bench(
        "--target", f"name=ingot,url={ingot_stack.base_url},server=ingot,model={ingot_stack.model}",
        "--api-key-env", "INGOT_BENCH_KEY", "--tokenizer", str(ingot_stack.tokenizer_dir),
        "--concurrency", "1,2", "--num-requests", "4", "--input-tokens", "16", "--output-tokens", "8")

    assert code == 0
    assert [e["point"]["label"] for e in report["runs"]] == ["c=1", "c=2"]
    for entry in report["runs"]:
        assert entry["summary"]["ok"] == 4, entry["summary"]["errors"]
        for record in entry["records"]:
            assert record["expected_prompt_tokens"] == 16
            assert record["prompt_tokens"] > 16           # the chat template adds its own tokens
    assert_consistent(report, output_tokens=8)            # usage from the server, ignore_eos honoured
    assert (out / "frontier.png").exists()


def test_completions_api_counts_the_exact_prompt(ingot_stack, run_bench, assert_consistent, monkeypatch):
    monkeypatch.setenv("INGOT_BENCH_KEY", ingot_stack.api_key)
    code, report, _ = run_bench(
        "--target", f"url={ingot_stack.base_url}/v1,api=completions,server=ingot",
        "--api-key-env", "INGOT_BENCH_KEY", "--tokenizer", str(ingot_stack.tokenizer_dir),
        "--num-requests", "2", "--input-tokens", "16", "--output-tokens", "8")

    assert code == 0
    (entry,) = report["runs"]
    assert entry["summary"]["ok"] == 2
    assert_consistent(report, output_tokens=8)
    assert {r["prompt_tokens"] - r["expected_prompt_tokens"] for r in entry["records"]} <= {0, 1}  # BOS or not
    assert all(r["prompt_tokens"] >= 16 for r in entry["records"])
