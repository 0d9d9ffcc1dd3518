"""Graceful shutdown of one gateway process: drain, then hand the signal to uvicorn.

On SIGTERM or SIGINT the gateway stops taking work but keeps listening: new requests to generating routes get
503 with `Retry-After` and `Connection: close`, `/ready` turns 503 (a load balancer stops sending), `/health`
stays 200 (a liveness probe must not kill a pod that is draining). Requests admitted before the signal go on
for up to the drain timeout. Generations still running then are ended: a stream gets an OpenAI-shape error
event and `data: [DONE]`, a non-streamed request a 503, and each one's Triton request is cancelled (its gRPC
stream is closed). Then uvicorn's own shutdown runs: it closes the listener and the idle connections.
The same signal a second time ends the waiting at once; a third goes straight to uvicorn.

uvicorn installs its handlers with `signal.signal` while it serves (server.Server.capture_signals). The app's
lifespan puts `Drain` in front of them and gives the signal to uvicorn's handler once the drain is over, so
uvicorn exits as it always does (and raises the signal again, which `ingot serve` turns into stopping Triton).
With several workers, uvicorn's parent sends SIGTERM to each worker, and each one drains on its own.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import threading
import weakref

from server.errors import APIError
from server.middleware import Admission, Check, is_keyed

log = logging.getLogger("ingot.gateway")
RETRY_AFTER_S = 2  # another replica (or this one, restarted) takes the request
END_GRACE_S = 5.0  # after the drain timeout: time for ended streams to send their error event and [DONE]
UVICORN_GRACE_S = 5  # then uvicorn's own shutdown: whatever is still open (not a generation) is cut after this
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def longest_shutdown_s(drain_timeout_s: float) -> float:
    """From the signal to the process's exit at worst: what a pod's terminationGracePeriodSeconds must exceed
    (plus its preStop hook)."""
    return drain_timeout_s + END_GRACE_S + UVICORN_GRACE_S


def shutting_down() -> APIError:
    return APIError(503, "The server is shutting down; retry the request.", "service_unavailable", None,
                    "server_shutting_down", headers={"Retry-After": str(RETRY_AFTER_S), "Connection": "close"})


class Drain:
    """What one gateway process knows about its shutdown: whether it refuses new work (`draining`), whether
    the running generations must end now (`expired`), and the requests still being answered."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.draining = False
        self.expired = False
        self.admitted = 0  # requests to generating routes admitted and not yet answered in full
        self.runs: weakref.WeakSet = weakref.WeakSet()  # generations, which `expire` interrupts
        self._idle = asyncio.Event()
        self._idle.set()
        self._hurry = asyncio.Event()
        self._signals: list[int] = []
        self._task: asyncio.Task | None = None

    # -- admission: count what is admitted, refuse once draining --
    def check(self, metrics) -> Check:
        async def refuse_when_draining(admission: Admission) -> None:
            if not is_keyed(admission.path):
                return
            if self.draining:
                metrics.rejected.labels("shutting_down").inc()
                raise shutting_down()
            self.admitted += 1
            self._idle.clear()
            admission.cleanup.callback(self._answered)

        return refuse_when_draining

    def _answered(self) -> None:
        self.admitted -= 1
        if self.admitted == 0:
            self._idle.set()

    # -- signals --
    def install(self) -> None:
        """Put the drain in front of the serving uvicorn's handlers; elsewhere (a thread, another server) leave
        the handlers alone."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for signum in SIGNALS:
            previous = signal.getsignal(signum)
            if not _is_uvicorn_handler(previous):
                continue

            def on_signal(received, frame, previous=previous):
                loop.call_soon_threadsafe(self._on_signal, received, previous)

            signal.signal(signum, on_signal)

    def _on_signal(self, signum: int, hand_over) -> None:
        self._signals.append(signum)
        repeats = self._signals.count(signum)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain(signum, hand_over))
        elif repeats == 2:
            log.warning("%s again: ending the running generations now", signal.Signals(signum).name)
            self._hurry.set()
        elif repeats > 2:
            hand_over(signum, None)

    async def _drain(self, signum: int, hand_over) -> None:
        self.draining = True
        log.warning("%s: draining (%d requests running); new ones get 503; running ones may go on for %gs",
                    signal.Signals(signum).name, self.admitted, self.timeout_s)
        if not await self._wait_idle(self.timeout_s):
            log.warning("drain timeout: ending %d running requests", self.admitted)
            self.expire()
            self._hurry.clear()
            await self._wait_idle(END_GRACE_S)
        hand_over(signum, None)

    async def _wait_idle(self, timeout_s: float) -> bool:
        """True once every admitted request is answered; False after the timeout or a hurrying signal."""
        idle, hurry = asyncio.ensure_future(self._idle.wait()), asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait({idle, hurry}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            return self._idle.is_set()
        finally:
            idle.cancel()
            hurry.cancel()

    def expire(self) -> None:
        """End every running generation: each raises `shutting_down()` where it waits on the engine."""
        self.expired = True
        for run in list(self.runs):
            run.interrupt()


def _is_uvicorn_handler(handler) -> bool:
    try:
        from uvicorn import Server
    except ImportError:
        return False
    return isinstance(getattr(handler, "__self__", None), Server)
