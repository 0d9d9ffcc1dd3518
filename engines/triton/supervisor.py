"""Keep one tritonserver running for `ingot serve`: restart it when it dies, with bounded backoff.

A dead server is reaped at once (no zombie) with what is left of its process group (a stub the crash
orphaned). The new one listens on the same ports, so the gateway's address stays valid; meanwhile the
gateway answers 503 with Retry-After because the model is not ready. The delay before a restart
doubles from `initial_backoff_s` up to `max_backoff_s` while restarts keep failing, and falls back to
the start once a server has stayed up for `stable_after_s`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from engines.triton.launcher import TritonServer, TritonStartError

log = logging.getLogger("ingot.triton")


@dataclass(frozen=True)
class RestartPolicy:
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    stable_after_s: float = 60.0
    ready_timeout_s: float = 300.0


class TritonSupervisor:
    def __init__(self, start: Callable[..., TritonServer], policy: RestartPolicy = RestartPolicy()):
        """`start(http_port=, grpc_port=, metrics_port=)` launches one server (0: free ports)."""
        self._start, self.policy = start, policy
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.server: TritonServer | None = None
        self.restarts = 0
        self._thread: threading.Thread | None = None

    def start(self, grpc_port: int = 0, on_stage=None) -> TritonServer:
        """The first server, ready (`on_stage` hears its startup stages); then a thread watches it."""
        server = self._start(http_port=0, grpc_port=grpc_port, metrics_port=0)
        with self._lock:
            self.server = server
        try:
            server.wait_ready(timeout=self.policy.ready_timeout_s, on_stage=on_stage)
        except BaseException:
            server.stop()
            raise
        self._thread = threading.Thread(target=self._watch, name="triton-supervisor", daemon=True)
        self._thread.start()
        return server

    def _watch(self) -> None:
        backoff, up_since = self.policy.initial_backoff_s, time.monotonic()
        while not self._stopping.is_set():
            server = self.server
            if server.process.poll() is None:
                self._stopping.wait(0.2)
                continue
            log.error("tritonserver exited with %s; restarting in %.1fs. Log:\n%s", server.process.returncode,
                      backoff, server.log_tail(20))
            server.reap_group()
            if time.monotonic() - up_since >= self.policy.stable_after_s:
                backoff = self.policy.initial_backoff_s
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, self.policy.max_backoff_s)
            if self._restart(server):
                up_since = time.monotonic()

    def _restart(self, previous: TritonServer) -> bool:
        with self._lock:
            if self._stopping.is_set():
                return False
            try:
                server = self._start(http_port=previous.http_port, grpc_port=previous.grpc_port,
                                     metrics_port=previous.metrics_port)
            except (OSError, TritonStartError) as exc:
                log.error("tritonserver did not start: %s", exc)
                return False
            self.server = server
            self.restarts += 1
        deadline = time.monotonic() + self.policy.ready_timeout_s
        while not self._stopping.is_set() and time.monotonic() < deadline:
            if server.process.poll() is not None:
                return False  # the watch loop sees it dead and backs off
            if server.is_ready():
                log.warning("tritonserver restarted (restart %d) and ready", self.restarts)
                return True
            self._stopping.wait(0.25)
        if not self._stopping.is_set():
            log.error("restarted tritonserver not ready after %.0fs; stopping it", self.policy.ready_timeout_s)
            server.stop()
        return False

    def stop(self, timeout: float = 20.0) -> None:
        """No restart from now on; stop the current server and wait until none of its processes is left."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            server = self.server
        if server is not None:
            server.stop(timeout=timeout)
