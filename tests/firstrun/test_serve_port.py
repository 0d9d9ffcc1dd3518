"""`ingot serve` (so `make serve`) checks its port before spending minutes on the model. What it prints
while it works, and its "gateway on …" line with the curl, are checked by tests/e2e/test_fresh_clone.py."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

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
