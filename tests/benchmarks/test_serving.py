"""The one ready-wait loop of the benchmarks and end-to-end tests (benchmarks/serving.py), against real processes: a
server that starts listening late, one that exits, one that never answers."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from benchmarks.serving import NotServing, answers_ready, wait_serving
from engines.triton.launcher import free_port


def start(command: list[str], log_path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def log_has_line(log_path, text: str) -> None:
    """Python starts slowly on a busy machine: wait until the child has written its line."""
    deadline = time.monotonic() + 120
    while text not in log_path.read_text():
        assert time.monotonic() < deadline, "the child wrote nothing"
        time.sleep(0.1)


def test_waits_through_refused_connections_until_ready_answers(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "ready").write_text("ok")
    port = free_port()
    # The server sleeps before it listens, so the first probes meet a refused connection.
    code = (f"import time, http.server, functools; time.sleep(1); "
            f"handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory={str(tmp_path / 'site')!r}); "
            f"http.server.ThreadingHTTPServer(('127.0.0.1', {port}), handler).serve_forever()")
    process = start([sys.executable, "-c", code], tmp_path / "server.log")
    try:
        waited = wait_serving(process, answers_ready(f"http://127.0.0.1:{port}"), tmp_path / "server.log", 120)
        assert waited >= 1.0
    finally:
        process.kill()
        process.wait()


def test_a_server_that_exits_fails_at_once_with_its_log(tmp_path):
    process = start([sys.executable, "-c", "print('cannot bind: address in use'); raise SystemExit(3)"],
                    tmp_path / "server.log")
    process.wait()
    with pytest.raises(NotServing, match=r"(?s)^transformers serve exited with status 3.*cannot bind: address in use"):
        wait_serving(process, answers_ready(f"http://127.0.0.1:{free_port()}", "/health"), tmp_path / "server.log",
                     600, name="transformers serve")


def test_a_server_that_never_serves_times_out_with_its_log(tmp_path):
    process = start([sys.executable, "-c", "print('loading forever', flush=True); import time; time.sleep(600)"],
                    tmp_path / "server.log")
    try:
        log_has_line(tmp_path / "server.log", "loading forever")
        with pytest.raises(NotServing, match=r"(?s)within 1 s.*loading forever"):
            wait_serving(process, answers_ready(f"http://127.0.0.1:{free_port()}"), tmp_path / "server.log", 1,
                         poll_s=0.1)
    finally:
        process.kill()
        process.wait()
