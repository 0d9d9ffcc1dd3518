"""Probes of a running stack for the e2e tests: the engine's gauges on Triton's metrics port, raw requests."""
from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx

CEILING_S = 10.0  # generous on a busy machine; a cancellation itself takes well under a second


def engine_metric(triton, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=10).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]
    assert values, f"{name} not exported by Triton"
    return sum(values)


def running(triton) -> float:
    return engine_metric(triton, "ingot_engine_running_requests")


def wait_until(condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def all_blocks_free(triton) -> bool:
    return engine_metric(triton, "ingot_engine_free_kv_blocks") == engine_metric(triton, "ingot_engine_total_kv_blocks")


def assert_engine_drained(triton) -> None:
    # the gauges are published one by one on the model's period: wait for a publication that shows both
    wait_until(lambda: running(triton) == 0 and all_blocks_free(triton), CEILING_S,
               "the engine kept generating for clients that went away, or kept their KV blocks")


def send_raw_request(base_url: str, path: str, body: dict, api_key: str) -> socket.socket:
    """A POST whose answer we never read: closing the socket is the client leaving."""
    url = urlsplit(base_url)
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.sendall(head.encode() + payload)
    return sock
