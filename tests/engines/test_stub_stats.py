"""The stub's timing lines: what each period counted, then a fresh period."""
from __future__ import annotations

import pytest

from engines.triton.stub_stats import ENV, StubStats, stats_period_s


def test_a_period_line_reports_steps_intake_first_tokens_and_sends_then_resets():
    stats = StubStats()
    for seconds in (0.010, 0.030):
        stats.step(seconds)
    stats.intake(0.002, 4)
    for seconds in (0.050, 0.070, 0.090):
        stats.first_token(seconds)
    stats.sent(0.0002, 1, since_intake=0.060)
    stats.sent(0.0004, 3, since_intake=None)
    line = stats.line(5.0, running=7)
    assert "5.0 s, 7 requests held: 2 steps (20.00 ms mean, 30.0 ms max)" in line
    assert "4 requests in (0.50 ms of execute each)" in line
    assert "first token 70.0 /" in line and "first response sent 60.0 / 60.0 ms" in line
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
