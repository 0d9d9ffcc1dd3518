"""The logprobs cost benchmarks run and write what their notes say: the engine alone (benchmarks/logprobs_cost.py)
and the whole stack (benchmarks/logprobs_cost_stack.py), at the smallest sizes."""
from __future__ import annotations

import json

import pytest

from benchmarks import logprobs_cost, logprobs_cost_stack

MODES = ["plain", "logprobs", "top_logprobs", "echo"]


def test_engine_benchmark_runs_every_mode(tmp_path):
    logprobs_cost.main(["--vocab", "1000", "--requests", "2", "--prompt-len", "8", "--output-len", "4",
                        "--repeats", "1", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "logprobs_cost_cpu.json").read_text())
    assert [row["mode"] for row in record["results"]] == MODES
    assert all(row["output_tokens"] == 8 and row["output_tokens_per_s"] > 0 for row in record["results"])
    assert len(record["load_average"]) == 3  # the machine's load is part of the figure
    assert "| echo |" in (tmp_path / "logprobs_cost_cpu.md").read_text()


@pytest.mark.e2e
def test_stack_benchmark_runs_every_mode_through_the_gateway(tmp_path):
    logprobs_cost_stack.main(["--users", "1", "--requests-per-user", "1", "--input-tokens", "8", "--output-tokens",
                              "4", "--repeats", "1", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "logprobs_cost_stack_cpu.json").read_text())
    assert [row["mode"] for row in record["results"]] == MODES
    assert all(row["output_tokens"] == 4 and row["gateway_cpu_ms_per_token"] >= 0 for row in record["results"])
    assert record["model"]["vocab"] == 32000
