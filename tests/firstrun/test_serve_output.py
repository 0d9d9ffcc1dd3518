"""What `ingot serve` (so `make serve`) tells a person: each long step, Triton's stages, and "gateway on …"
only once the gateway accepts connections, with a curl that answers when pasted as it is."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from engines.triton.launcher import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def serve_command(port: int, work_dir) -> list[str]:
    return [sys.executable, "-m", "server.cli", "serve", "--demo", "llama", "--port", str(port),
            "--work-dir", str(work_dir)]


def keyless_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("INGOT_")}


def test_a_taken_port_fails_at_once_with_the_fix(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(serve_command(port, tmp_path / "work"), cwd=ROOT, env=keyless_env(),
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and f"make serve PORT={port + 1}" in result.stderr
    assert not (tmp_path / "work").exists(), "nothing was built before the port was checked"


def wait_for_line(log_path, pattern: str, process: subprocess.Popen, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()[-3000:]
        found = re.search(pattern, log_path.read_text())
        if found:
            return found.group(0)
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} in the log:\n{log_path.read_text()[-3000:]}")


def test_serve_tells_each_stage_and_announces_once_listening(tmp_path):
    port, log_path = free_port(), tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(serve_command(port, tmp_path / "work"), cwd=ROOT, env=keyless_env(),
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_line(log_path, r"gateway on http://127\.0\.0\.1:\d+/v1", process)
        # Announced only after the gateway answered: no retry needed from here on.
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        curl = wait_for_line(log_path, r"curl -s \S+/v1/chat/completions .*", process)
        answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120)
        wait_for_line(log_path, r"stop with Ctrl\+C", process)
        text = log_path.read_text()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)

    reply = json.loads(answer.stdout)
    assert reply["model"] == "demo-llama" and reply["usage"]["completion_tokens"] >= 1, reply
    assert isinstance(reply["choices"][0]["message"]["content"], str)
    order = ["making the demo checkpoint demo-llama ...", "packing the artifact demo-llama ...",
             "packing the artifact demo-llama: done in", "Triton ...", "Triton: ready", "Triton: done in",
             "starting the gateway", f"gateway on http://127.0.0.1:{port}/v1 (model 'demo-llama')",
             "API docs: ", "stop with Ctrl+C"]
    positions = [text.find(marker) for marker in order]
    found = dict(zip(order, positions, strict=True))
    assert -1 not in positions and positions == sorted(positions), (found, text[-4000:])
    assert re.search(r"Triton: (model loading: tensorrt_llm|model instance starting: tensorrt_llm_0_0) \(\d+s\)", text)
    assert text.count("gateway on ") == 1
