"""The GPU comparison script end to end on CPU: our stack and `transformers serve` on one tiny checkpoint."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from benchmarks.gpu_stack_bench import main

pytestmark = pytest.mark.e2e


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(command)
    return found


def test_both_servers_on_one_workload_then_all_stopped(tmp_path, assert_consistent):
    pytest.importorskip("accelerate")  # transformers serve places the model with a device map
    out, work = tmp_path / "out", tmp_path / "work"
    code = main(["--shape", "tiny", "--device", "cpu", "--out", str(out), "--work-dir", str(work),
                 "--concurrency", "1,2", "--num-requests", "3", "--input-tokens", "16", "--output-tokens", "8",
                 "--duration", "30"])

    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert [t["name"] for t in report["targets"]] == ["ingot", "transformers"]
    assert_consistent(report, output_tokens=8)     # transformers too: its model has no end-of-sequence token
    prompts: dict[str, dict] = {}
    for entry in report["runs"]:
        assert entry["summary"]["ok"] == 3, entry["summary"]["errors"]
        prompts.setdefault(entry["point"]["label"], {})[entry["target"]] = {
            r["index"]: r["prompt_tokens"] for r in entry["records"]}
    for label, by_target in prompts.items():       # same requests, same chat template, same token counts
        assert by_target["ingot"] == by_target["transformers"], label
    assert set(prompts["c=1"]["ingot"]).isdisjoint(prompts["c=2"]["ingot"])   # fresh prompts per point
    setup = json.loads((out / "setup.json").read_text())
    assert setup["ingot"]["portable_engine"]["enable_kv_cache_reuse"] == "false"
    assert "--continuous-batching" in setup["transformers"]["command"]
    logs = (out / "server_logs.txt").read_text()
    assert all(f"===== {name}" in logs for name in ("triton", "transformers", "gateway"))
    for path in ("summary.md", "frontier.png", "ttft.png"):
        assert (out / path).is_file()
    deadline = time.monotonic() + 15
    while processes_mentioning(str(work)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_mentioning(str(work)) == []
