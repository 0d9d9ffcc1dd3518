"""Per-key rate limits and token quotas, kept in process or, shared by several gateways, in Redis.

A key's limits (all optional, set in the key file, see server/auth.py):
- `rpm`: requests per minute, `tpm`: tokens (prompt + completion) per minute, in fixed one-minute windows;
- `concurrency`: requests of the key running at once;
- `quota=N/period` (period: hour, day or month, UTC calendar): the hard limit, tokens per period, after which
  requests get 429 `insufficient_quota` until the period ends; `quota_soft=N`: the soft limit, crossing it is
  logged and counted, requests go on (OpenAI's soft and hard usage limits).
Tokens are charged when a request ends, with what it really used: a key is admitted while it has tokens left,
so one window can overshoot by the requests that were running when it filled up.

`LocalLimiter` keeps the counts in this process (each gateway worker its own: with N workers a key gets up to
N times its limits); `RedisLimiter` keeps them in Redis (INGOT_REDIS_URL), atomically, exact across workers
and pods. A running request holds a lease on its concurrency slot, so a worker that dies frees it after
`lease_s`.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from server.errors import APIError

QUOTA_PERIODS = ("hour", "day", "month")
LIMIT_FIELDS = ("rpm", "tpm", "concurrency", "quota", "quota_soft")
CONCURRENCY_RETRY_S = 1


@dataclass(frozen=True)
class KeyLimits:
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    quota: int | None = None
    quota_soft: int | None = None
    quota_period: str = "day"

    @property
    def limited(self) -> bool:
        return any(getattr(self, name) is not None for name in ("rpm", "tpm", "concurrency", "quota"))


def parse_limits(options: dict[str, str]) -> KeyLimits:
    """KeyLimits from a key-file line's `name=value` options (ValueError names the bad one)."""
    values: dict = {}
    for name, text in options.items():
        if name not in LIMIT_FIELDS:
            known = ", ".join(("id", *LIMIT_FIELDS))
            raise ValueError(f"unknown option {name!r} (known: {known})")
        if name == "quota" and "/" in text:
            text, values["quota_period"] = text.split("/", 1)
            if values["quota_period"] not in QUOTA_PERIODS:
                raise ValueError(f"quota period must be one of {', '.join(QUOTA_PERIODS)}")
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{name}={text!r}: expected a positive integer")
        values[name] = int(text)
    return KeyLimits(**values)


def period_bounds(period: str, now: float) -> tuple[int, int]:
    """Start and end (epoch seconds) of the UTC window holding `now`."""
    if period in ("minute", "hour", "day"):
        size = {"minute": 60, "hour": 3600, "day": 86400}[period]
        start = int(now // size * size)
        return start, start + size
    moment = datetime.fromtimestamp(now, timezone.utc)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return int(start.timestamp()), int(end.timestamp())


def format_reset(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: '20ms', '1.5s', '6m0s'."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    rest = f"{round(rest, 3):g}s"
    return f"{int(minutes)}m{rest}" if minutes else rest


@dataclass
class Counts:
    """What the store found for a key at admission (this request included when admitted)."""

    active: int = 0
    requests: int = 0
    tokens: int = 0
    quota_used: int = 0


@dataclass
class Grant:
    """An admitted request of a limited key: released (and charged) once it ends."""

    key_id: str
    limits: KeyLimits
    lease: str
    counts: Counts
    now: float

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers for the limits the key has."""
        minute_reset = format_reset(period_bounds("minute", self.now)[1] - self.now)
        headers = {}
        if self.limits.rpm is not None:
            headers["x-ratelimit-limit-requests"] = str(self.limits.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, self.limits.rpm - self.counts.requests))
            headers["x-ratelimit-reset-requests"] = minute_reset
        if self.limits.tpm is not None:
            headers["x-ratelimit-limit-tokens"] = str(self.limits.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, self.limits.tpm - self.counts.tokens))
            headers["x-ratelimit-reset-tokens"] = minute_reset
        return headers


def rate_limited(limit: str, limits: KeyLimits, counts: Counts, now: float) -> APIError:
    """The 429 for the first limit a request broke, in OpenAI's shape, with Retry-After."""
    minute_end = period_bounds("minute", now)[1]
    if limit == "concurrency":
        retry, message = CONCURRENCY_RETRY_S, (
            f"Too many concurrent requests for this key: limit {limits.concurrency}. "
            "Wait for a running request to finish.")
    elif limit == "requests":
        retry, message = minute_end - now, (
            f"Rate limit reached on requests per minute (RPM): limit {limits.rpm}, used {counts.requests}.")
    elif limit == "tokens":
        retry, message = minute_end - now, (
            f"Rate limit reached on tokens per minute (TPM): limit {limits.tpm}, used {counts.tokens}.")
    else:
        retry = period_bounds(limits.quota_period, now)[1] - now
        error = APIError(429, f"You exceeded your quota of {limits.quota} tokens per {limits.quota_period} "
                              f"(used {counts.quota_used}); it renews in {format_reset(retry)}.",
                         "insufficient_quota", None, "insufficient_quota")
        error.headers["Retry-After"] = str(max(1, int(retry + 0.999)))
        return error
    error = APIError(429, f"{message} Please try again in {format_reset(retry)}.", limit, None,
                     "rate_limit_exceeded")
    error.headers["Retry-After"] = str(max(1, int(retry + 0.999)))
    return error


def first_broken(limits: KeyLimits, counts: Counts) -> str | None:
    """Which limit a new request would break, given the counts before it; None if it may run."""
    if limits.concurrency is not None and counts.active >= limits.concurrency:
        return "concurrency"
    if limits.rpm is not None and counts.requests >= limits.rpm:
        return "requests"
    if limits.tpm is not None and counts.tokens >= limits.tpm:
        return "tokens"
    if limits.quota is not None and counts.quota_used >= limits.quota:
        return "quota"
    return None


class LocalLimiter:
    """Counts in this process: exact for one gateway worker, per worker with several."""

    def __init__(self, lease_s: float = 900.0):
        self.lease_s = lease_s
        self._active: dict[str, dict[str, float]] = {}
        self._counters: dict[tuple[str, str, int], int] = {}

    def _count(self, key_id: str, kind: str, start: int) -> int:
        return self._counters.get((key_id, kind, start), 0)

    async def admit(self, key_id: str, limits: KeyLimits, now: float | None = None) -> Grant:
        now = time.time() if now is None else now
        minute = period_bounds("minute", now)[0]
        period = period_bounds(limits.quota_period, now)[0]
        active = {lease: expiry for lease, expiry in self._active.get(key_id, {}).items() if expiry > now}
        counts = Counts(len(active), self._count(key_id, "requests", minute), self._count(key_id, "tokens", minute),
                        self._count(key_id, "quota", period))
        broken = first_broken(limits, counts)
        if broken:
            raise rate_limited(broken, limits, counts, now)
        lease = uuid.uuid4().hex
        active[lease] = now + self.lease_s
        self._active[key_id] = active
        self._counters[(key_id, "requests", minute)] = counts.requests + 1
        counts.active, counts.requests = counts.active + 1, counts.requests + 1
        return Grant(key_id, limits, lease, counts, now)

    async def release(self, grant: Grant, tokens: int, now: float | None = None) -> int:
        """Frees the concurrency slot and charges the tokens; returns the key's quota used this period."""
        now = time.time() if now is None else now
        self._active.get(grant.key_id, {}).pop(grant.lease, None)
        minute = period_bounds("minute", now)[0]
        period = period_bounds(grant.limits.quota_period, now)[0]
        self._prune(minute)
        self._counters[(grant.key_id, "tokens", minute)] = self._count(grant.key_id, "tokens", minute) + tokens
        used = self._count(grant.key_id, "quota", period) + tokens
        self._counters[(grant.key_id, "quota", period)] = used
        return used

    def _prune(self, minute: int) -> None:
        """Drops the minute windows that are over (quota periods are few and kept)."""
        stale = [k for k in self._counters if k[1] != "quota" and k[2] < minute]
        for key in stale:
            del self._counters[key]

    async def close(self) -> None:
        pass

