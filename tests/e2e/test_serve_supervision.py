"""`ingot serve` keeps Triton running: a killed tritonserver is reaped and restarted on the same address
while the gateway answers 503, and nothing is left once serve exits."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from benchmarks import serving
from engines.triton.processes import alive, cmdline, descendants
from server.stack import DEMO_API_KEY
from tests.e2e import serve_process

pytestmark = pytest.mark.e2e
HEADERS = {"Authorization": f"Bearer {DEMO_API_KEY}"}


def start_serve(tmp_path):
    return serve_process.start_serve(tmp_path, "--demo", "llama")


def completion(base_url: str, max_tokens: int = 4) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/completions", headers=HEADERS, timeout=60,
                      json={"model": "demo-llama", "prompt": "Hello", "max_tokens": max_tokens})


def wait_serving(process, base_url: str, log_path, timeout: float = 240) -> float:
    """Seconds until a completion succeeds: after a kill, the time to serve again."""
    return serving.wait_serving(process, lambda: completion(base_url).status_code == 200, log_path, timeout,
                                poll_s=0.2)


def tritonservers(serve_pid: int) -> list[int]:
    return [pid for pid in descendants(serve_pid) if "bin/tritonserver" in cmdline(pid)]


def test_killed_triton_is_restarted_and_nothing_outlives_serve(tmp_path):
    process, base_url, log_path = start_serve(tmp_path)
    try:
        wait_serving(process, base_url, log_path)
        [first] = tritonservers(process.pid)
        stubs = [pid for pid in descendants(first)]
        assert stubs
        os.kill(first, signal.SIGKILL)
        down = completion(base_url)
        assert down.status_code == 503, down.text
        assert "retry-after" in {k.lower() for k in down.headers}
        recovered_in = wait_serving(process, base_url, log_path)
        print(f"serving again {recovered_in:.1f}s after tritonserver was killed")
        assert not alive(first), "the dead tritonserver was not reaped"
        assert not any(alive(pid) for pid in stubs), "the dead server's stub lives on"
        [second] = tritonservers(process.pid)
        assert second != first
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    assert process.returncode == 0, log_path.read_text()[-3000:]
    leftover = [int(p.name) for p in Path("/proc").iterdir()
                if p.name.isdigit() and str(tmp_path / "work") in cmdline(int(p.name)) and alive(int(p.name))]
    assert leftover == [], "processes outlived `serve`"
