"""`make serve` runs `python -m server.cli serve`: the whole stack comes up, answers, and goes away cleanly."""
from __future__ import annotations

import signal
import subprocess
import time

import httpx
import pytest

from server.stack import DEMO_API_KEY
from tests.e2e.serve_process import start_serve, wait_ready

pytestmark = pytest.mark.e2e


def test_serve_brings_up_the_stack_and_leaves_nothing_running(tmp_path):
    process, base_url, log_path = start_serve(tmp_path, "--demo", "mistral")
    try:
        wait_ready(process, base_url, log_path, timeout=240)
        reply = httpx.post(f"{base_url}/v1/chat/completions", timeout=60,
                           headers={"Authorization": f"Bearer {DEMO_API_KEY}"},
                           json={"model": "demo-mistral", "messages": [{"role": "user", "content": "你好"}],
                                 "max_tokens": 8})
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] >= 1
        triton_pids = subprocess.run(["pgrep", "-f", str(tmp_path / "work")], capture_output=True, text=True)
        assert triton_pids.stdout.split(), "tritonserver should be running under the work dir"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    time.sleep(0.5)
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "work")], capture_output=True, text=True)
    assert leftover.stdout.split() == [], "tritonserver outlived `serve`"
