"""`make serve` runs `python -m server.cli serve`: the whole stack comes up, answers, and goes away cleanly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from engines.triton.launcher import free_port
from server.stack import DEMO_API_KEY
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def test_serve_brings_up_the_stack_and_leaves_nothing_running(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGOT_API_KEYS")}
    log_path = tmp_path / "serve.log"
    command = [sys.executable, "-m", "server.cli", "serve", "--demo", "mistral", "--port", str(port),
               "--work-dir", str(tmp_path / "work")]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the stack did not become ready"
            try:
                if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
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
