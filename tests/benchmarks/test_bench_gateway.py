"""`ingot bench` against the real gateway app over HTTP, with a scripted engine in place of Triton.

This pins the gateway's streaming shapes (role chunk, usage chunk, [DONE]) and its usage counts without
needing a Triton server; the full stack is covered by test_bench_stack.py.
"""
from __future__ import annotations

import asyncio

import pytest

from benchmarks.calibration import serve_in_thread
from engines.contract import GenerationChunk
from server.app import create_app
from server.settings import Settings

KEY = "sk-bench-test"


class ScriptedEngine:
    """Answers every request with `request_output_len` tokens, one per chunk, 5 ms apart."""

    async def generate(self, request, request_id: str = ""):
        for k in range(request.request_output_len):
            await asyncio.sleep(0.005)
            yield GenerationChunk([40 + k % 200], final=k == request.request_output_len - 1)

    async def is_ready(self) -> bool:
        return True

    async def close(self) -> None:
        pass


@pytest.fixture
def gateway(demo_artifact, monkeypatch):
    monkeypatch.setenv("INGOT_BENCH_KEY", KEY)
    app = create_app(Settings(artifact_dir=demo_artifact, api_keys=(KEY,)), engine=ScriptedEngine())
    with serve_in_thread(app) as url:
        yield url


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_gateway_usage_and_timings(gateway, demo_artifact, api, run_bench, assert_consistent):
    code, report, _ = run_bench("--target", f"url={gateway},api={api},server=ingot", "--api-key-env", "INGOT_BENCH_KEY",
                                "--tokenizer", str(demo_artifact / "tokenizer"), "--concurrency", "1,2",
                                "--num-requests", "4", "--input-tokens", "16", "--output-tokens", "8")

    assert code == 0
    assert_consistent(report, output_tokens=8)
    for entry in report["runs"]:
        assert entry["summary"]["ok"] == 4
        for record in entry["records"]:
            assert len(record["chunk_times"]) <= 8
            assert record["prompt_tokens"] >= record["expected_prompt_tokens"] == 16
    assert report["targets"][0]["model"] == "demo-llama"     # found at /v1/models


def test_gateway_rejects_a_wrong_key(gateway, demo_artifact, run_bench, monkeypatch):
    monkeypatch.setenv("INGOT_BENCH_KEY", "not-the-key")
    code, report, _ = run_bench("--target", gateway, "--server", "ingot", "--model", "demo-llama",
                                "--api-key-env", "INGOT_BENCH_KEY", "--num-requests", "3")

    assert code == 1
    assert report["runs"][0]["summary"]["errors"] == {"http_401": 3}
