"""The stub's timing lines: what each period counted, then a fresh period."""
from __future__ import annotations

import pytest

from engines.triton.stub_stats import ENV, StubStats, stats_period_s


def test_a_period_line_reports_steps_intake_first_tokens_and_sends_then_resets():
    stats = StubStats()
    stats.step(0.010)
    stats.step(0.030, pipelined=True)
    stats.intake(0.002, 4)
    stats.waiting(3)
    for seconds, steps in ((0.050, 2), (0.070, 4), (0.090, 5)):
        stats.first_token(seconds, steps)
    stats.sent(0.0002, 1, since_intake=0.060)
    stats.sent(0.0004, 3, since_intake=None)
    line = stats.line(5.0, running=7)
    assert "5.0 s, 7 requests held: 2 steps (20.00 ms mean, 30.0 ms max, 1 pipelined)" in line
    assert "4 requests in (0.50 ms of execute each, 3 / 3 waiting in the engine)" in line
    assert "first token 70.0 /" in line and "(4 / 5 steps) after intake" in line
    assert "first response sent 60.0 / 60.0 ms" in line
    assert "2 responses (0.30 ms each to build and send, 2.00 tokens each)" in line
    assert stats.line(5.0, running=0) is None  # nothing happened: no line
    stats.intake(0.001, 1)
    assert "0 steps (- ms mean" in stats.line(5.0, running=1)


def test_the_period_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert stats_period_s() == 0.0
    monkeypatch.setenv(ENV, "2.5")
    assert stats_period_s() == 2.5
    monkeypatch.setenv(ENV, "-1")
    with pytest.raises(ValueError, match=ENV):
        stats_period_s()
