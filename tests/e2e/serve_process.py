"""`ingot serve` as a child process, the way the end-to-end tests drive it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from benchmarks.serving import answers_ready, wait_serving
from engines.triton.launcher import free_port
from tests.conftest import ROOT


def start_serve(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str, Path]:
    """`python -m server.cli serve ARGS --port <free> --work-dir tmp_path/work`, logging to tmp_path/serve.log.
    Without `env`, the environment less any INGOT_API_KEYS* (serve then accepts its demo key on loopback)."""
    port = free_port()
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INGOT_API_KEYS")}
    log_path = tmp_path / "serve.log"
    command = [sys.executable, "-m", "server.cli", "serve", *args, "--port", str(port),
               "--work-dir", str(tmp_path / "work")]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}", log_path


def wait_ready(process: subprocess.Popen, base_url: str, log_path: Path, timeout: float) -> None:
    """Until /ready answers 200; fails at once if serve exits, with the end of its log."""
    wait_serving(process, answers_ready(base_url), log_path, timeout)
