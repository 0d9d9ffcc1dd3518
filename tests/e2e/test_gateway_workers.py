"""`ingot gateway --workers 2`: both processes serve, /metrics sums them, nothing is left after exit."""
from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import start_gateway
from tests.e2e.engine_probe import wait_until

pytestmark = pytest.mark.e2e
MAX_STREAMS = 128


def workers_of(process) -> list[psutil.Process]:
    children = psutil.Process(process.pid).children()
    return [child for child in children if "spawn_main" in " ".join(child.cmdline())]


def connections_on(worker: psutil.Process, port: int) -> int:
    return sum(1 for c in worker.net_connections("tcp") if c.laddr.port == port and c.status == "ESTABLISHED")


def requests_counted(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    pattern = re.compile(r'^ingot_requests_total\{route="/v1/completions",status="200"\} (\S+)$', re.M)
    return sum(float(value) for value in pattern.findall(text))


def test_two_workers_serve_and_sum_their_metrics(ingot_stack, tmp_path):
    log_path = tmp_path / "gateway.log"
    process, base_url = start_gateway(ingot_stack.artifact, ingot_stack.triton.grpc_url, log_path,
                                      {"INGOT_GATEWAY_WORKERS": "2"})
    port = int(base_url.rsplit(":", 1)[1])
    headers = {"Authorization": f"Bearer {ingot_stack.api_key}"}
    body = {"model": ingot_stack.model, "prompt": "Hello", "max_tokens": 16, "ignore_eos": True}
    try:
        wait_until(lambda: len(workers_of(process)) == 2, 60, "two worker processes")
        workers = workers_of(process)
        # Streams held open together, each its own connection, until both workers hold some. The kernel hands a
        # connection to whichever worker accepts first: on a loaded machine one may take a run of them, never all.
        opened = 0
        with httpx.Client(base_url=base_url, headers=headers, timeout=60,
                          limits=httpx.Limits(max_connections=MAX_STREAMS)) as client, ExitStack() as streams:
            while opened < MAX_STREAMS:
                response = streams.enter_context(client.stream("POST", "/v1/completions",
                                                               json={**body, "stream": True}))
                assert response.status_code == 200
                opened += 1
                held = {worker.pid: connections_on(worker, port) for worker in workers}
                if opened >= 16 and all(count > 0 for count in held.values()):
                    break
        assert all(count > 0 for count in held.values()), f"a worker served nothing in {opened} streams: {held}"
        for _ in range(10):  # a new connection each
            assert httpx.post(f"{base_url}/v1/completions", json=body, headers=headers, timeout=60).status_code == 200
        wait_until(lambda: requests_counted(base_url) == opened + 10, 30,
                   "/metrics does not sum the two workers' requests")
        text = log_path.read_text()
        metrics_dir = Path(re.search(r"their metrics are summed from (\S+)", text).group(1))
        assert metrics_dir.is_dir() and any(metrics_dir.iterdir())
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert not metrics_dir.parent.exists(), "the private metrics folder outlived the gateway"
    assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers)
