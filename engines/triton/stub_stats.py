"""Where a request's time goes inside the Triton stub, logged on a period: a diagnostic for benchmarks.

Set INGOT_ENGINE_STATS_S (seconds, in tritonserver's environment) and the portable model logs one line per
period to Triton's log: engine steps (how long each took), requests taken in (how long `execute` held
them), the time from intake to the engine's first token and to the first response sent, and responses
sent (how long each took, how many tokens each carried). Time to first token as a client sees it, less
these, is the gateway's, gRPC's and Triton's share. Off by default: then nothing is measured.
"""
from __future__ import annotations

import os
import statistics
import threading

ENV = "INGOT_ENGINE_STATS_S"


def stats_period_s() -> float:
    """The period from the environment; 0 when unset (no statistics)."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return 0.0
    period = float(value)
    if period <= 0:
        raise ValueError(f"{ENV} must be a positive number of seconds, got {value!r}")
    return period


class StubStats:
    """Counters written by the engine thread, the sender and intake, read and reset by the monitor."""

    def __init__(self):
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.steps, self.step_s, self.step_max_s, self.pipelined = 0, 0.0, 0.0, 0
        self.first_token_steps: list[int] = []
        self.waiting_at_intake: list[int] = []
        self.requests, self.intake_s = 0, 0.0
        self.first_token_s: list[float] = []
        self.first_sent_s: list[float] = []
        self.responses, self.send_s, self.tokens = 0, 0.0, 0

    def step(self, seconds: float, pipelined: bool = False) -> None:
        """One engine step; `pipelined` when it left a decode launched on the GPU (CUDA graphs)."""
        with self._lock:
            self.steps += 1
            self.pipelined += pipelined
            self.step_s += seconds
            self.step_max_s = max(self.step_max_s, seconds)

    def waiting(self, count: int) -> None:
        """Requests the engine held without running them when one more came in."""
        with self._lock:
            self.waiting_at_intake.append(count)

    def intake(self, seconds: float, requests: int) -> None:
        with self._lock:
            self.requests += requests
            self.intake_s += seconds

    def first_token(self, seconds: float, steps: int | None = None) -> None:
        with self._lock:
            self.first_token_s.append(seconds)
            if steps is not None:
                self.first_token_steps.append(steps)

    def sent(self, seconds: float, tokens: int, since_intake: float | None) -> None:
        """One response; `since_intake` for a request's first one."""
        with self._lock:
            self.responses += 1
            self.send_s += seconds
            self.tokens += tokens
            if since_intake is not None:
                self.first_sent_s.append(since_intake)

    def line(self, period_s: float, running: int) -> str | None:
        """The period's figures, then start a new period; None for a period when nothing happened."""
        with self._lock:
            if not (self.steps or self.requests or self.responses):
                return None
            text = (f"engine stats over {period_s:.1f} s, {running} requests held: {self.steps} steps "
                    f"({_ms(self.step_s, self.steps)} ms mean, {self.step_max_s * 1e3:.1f} ms max, "
                    f"{self.pipelined} pipelined); {self.requests} requests in "
                    f"({_ms(self.intake_s, self.requests)} ms of execute each, {_counts(self.waiting_at_intake)} "
                    f"waiting in the engine); first token {_quantiles(self.first_token_s)} ms "
                    f"({_counts(self.first_token_steps)} steps) after intake, first response sent "
                    f"{_quantiles(self.first_sent_s)} ms after intake (p50 / p90); {self.responses} responses "
                    f"({_ms(self.send_s, self.responses)} ms each to build and send, "
                    f"{self.tokens / max(self.responses, 1):.2f} tokens each)")
            self._reset()
        return text


def _ms(total_s: float, count: int) -> str:
    return f"{total_s * 1e3 / count:.2f}" if count else "-"


def _counts(values: list[int]) -> str:
    """p50 / p90 of whole numbers."""
    if not values:
        return "- / -"
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2]} / {ordered[min(len(ordered) - 1, len(ordered) * 9 // 10)]}"


def _quantiles(values: list[float]) -> str:
    if not values:
        return "- / -"
    if len(values) == 1:
        return f"{values[0] * 1e3:.1f} / {values[0] * 1e3:.1f}"
    cuts = statistics.quantiles(values, n=10)
    return f"{statistics.median(values) * 1e3:.1f} / {cuts[8] * 1e3:.1f}"
