"""Waiting for a server process that a benchmark or an end-to-end test started to serve.

One loop for all of them: it polls a probe (the gateway's /ready, or a real completion where the time to serve again is
what is measured), gives up at once when the process exits and after a timeout, and in both cases says why with the end
of the process's log, since that log is the only place the cause is written.
"""
from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from engines.triton.launcher import log_tail

class NotServing(RuntimeError):
    """The process exited before it served, or did not serve within the timeout."""


def answers_ready(base_url: str, path: str = "/ready") -> Callable[[], bool]:
    """A probe: GET `path` answers 200 (the gateway's /ready: its model is loaded and Triton is reachable)."""
    return lambda: httpx.get(f"{base_url}{path}", timeout=2).status_code == 200


def wait_serving(process: subprocess.Popen, probe: Callable[[], bool], log_path: Path, timeout: float,
                 poll_s: float = 0.3, name: str = "the server") -> float:
    """Seconds until `probe()` returns true. A probe that raises httpx.HTTPError (nothing listening yet, a reset
    connection) counts as not yet. Raises NotServing when `process` exits first or `timeout` seconds pass."""
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            raise NotServing(f"{name} exited with status {process.returncode}:\n{log_tail(log_path)}")
        if time.monotonic() - started > timeout:
            raise NotServing(f"{name} did not serve within {timeout:.0f} s:\n{log_tail(log_path)}")
        try:
            if probe():
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
