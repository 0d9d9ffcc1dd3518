"""Per-key limits and quotas: the same rules in process and in a real Redis shared by two gateways.

Time is passed in (`now=`), so windows and periods are crossed without waiting.
"""
from __future__ import annotations

import calendar
from datetime import datetime, timezone

import pytest

from server.errors import APIError
from server.limits import KeyLimits, LocalLimiter, format_reset, period_bounds
from server.limits_redis import RedisLimiter

pytestmark = pytest.mark.asyncio(loop_scope="session")  # the loop of the async fixture that closes clients
NOON = calendar.timegm(datetime(2026, 11, 23, 12, 0, 0, tzinfo=timezone.utc).timetuple())


@pytest.fixture(params=["local", "redis"])
async def make_limiter(request):
    """Callable giving limiters that share counts: the same object in process, one client each on Redis."""
    made = []
    if request.param == "local":
        shared = LocalLimiter()
        yield lambda: shared
        return
    server = request.getfixturevalue("redis_server")
    import redis

    redis.Redis.from_url(server.url).flushdb()

    def make():
        limiter = RedisLimiter(server.url)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


async def rejected(limiter, key_id: str, limits: KeyLimits, now: float) -> APIError:
    with pytest.raises(APIError) as caught:
        await limiter.admit(key_id, limits, now=now)
    assert caught.value.status == 429
    return caught.value


async def test_requests_per_minute(make_limiter):
    limiter, limits = make_limiter(), KeyLimits(rpm=3)
    grants = [await limiter.admit("team-a", limits, now=NOON + i) for i in range(3)]
    assert [g.headers()["x-ratelimit-remaining-requests"] for g in grants] == ["2", "1", "0"]
    assert grants[0].headers()["x-ratelimit-limit-requests"] == "3"
    assert grants[0].headers()["x-ratelimit-reset-requests"] == "1m0s"
    error = await rejected(limiter, "team-a", limits, NOON + 15)
    assert error.code == "rate_limit_exceeded" and error.type == "requests"
    assert error.headers["Retry-After"] == "45"
    assert "requests per minute" in error.message
    await limiter.admit("team-b", limits, now=NOON + 15)  # another key has its own counts
    await limiter.admit("team-a", limits, now=NOON + 60)  # the next minute


async def test_concurrent_requests(make_limiter):
    limiter, limits = make_limiter(), KeyLimits(concurrency=2)
    first = await limiter.admit("k", limits, now=NOON)
    await limiter.admit("k", limits, now=NOON)
    error = await rejected(limiter, "k", limits, NOON)
    assert error.type == "concurrency" and int(error.headers["Retry-After"]) >= 1
    await limiter.release(first, tokens=10, now=NOON + 1)
    await limiter.admit("k", limits, now=NOON + 1)


async def test_a_dead_worker_frees_its_slots_after_the_lease(make_limiter):
    limiter, limits = make_limiter(), KeyLimits(concurrency=1)
    await limiter.admit("k", limits, now=NOON)  # never released: its worker died
    await rejected(limiter, "k", limits, NOON + 10)
    await limiter.admit("k", limits, now=NOON + limiter.lease_s + 1)


async def test_tokens_per_minute_are_charged_when_requests_end(make_limiter):
    limiter, limits = make_limiter(), KeyLimits(tpm=100)
    grant = await limiter.admit("k", limits, now=NOON)
    assert grant.headers()["x-ratelimit-remaining-tokens"] == "100"
    await limiter.release(grant, tokens=60, now=NOON + 1)
    grant = await limiter.admit("k", limits, now=NOON + 2)
    assert grant.headers()["x-ratelimit-remaining-tokens"] == "40"
    await limiter.release(grant, tokens=45, now=NOON + 3)
    error = await rejected(limiter, "k", limits, NOON + 4)
    assert error.type == "tokens" and error.headers["Retry-After"] == "56"
    await limiter.admit("k", limits, now=NOON + 61)


async def test_hard_quota_per_day_until_utc_midnight(make_limiter):
    limiter, limits = make_limiter(), KeyLimits(quota=1000, quota_period="day")
    grant = await limiter.admit("k", limits, now=NOON)
    assert await limiter.release(grant, tokens=1000, now=NOON) == 1000
    error = await rejected(limiter, "k", limits, NOON + 3600)
    assert error.code == "insufficient_quota" and error.type == "insufficient_quota"
    assert error.headers["Retry-After"] == str(11 * 3600)
    await limiter.admit("k", limits, now=NOON + 12 * 3600)


async def test_two_gateways_share_the_limits_through_redis(redis_server):
    import redis

    redis.Redis.from_url(redis_server.url).flushdb()
    one, two = RedisLimiter(redis_server.url), RedisLimiter(redis_server.url)
    limits = KeyLimits(rpm=4, concurrency=3)
    for limiter in (one, two, one):
        await limiter.admit("shared", limits, now=NOON)
    await rejected(two, "shared", limits, NOON)  # concurrency: 3 running on the two gateways
    await rejected(one, "shared", limits, NOON)
    await one.close()
    await two.close()


async def test_limits_fail_open_when_redis_is_unreachable():
    from engines.triton.launcher import free_port

    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    grant = await limiter.admit("k", KeyLimits(rpm=1), now=NOON)
    await limiter.admit("k", KeyLimits(rpm=1), now=NOON)
    assert await limiter.release(grant, tokens=5, now=NOON) == 0
    await limiter.close()


async def test_periods_and_reset_format():
    assert period_bounds("minute", NOON + 59.5) == (NOON, NOON + 60)
    start, end = period_bounds("month", NOON)
    assert datetime.fromtimestamp(start, timezone.utc) == datetime(2026, 11, 1, tzinfo=timezone.utc)
    assert datetime.fromtimestamp(end, timezone.utc) == datetime(2026, 12, 1, tzinfo=timezone.utc)
    december = calendar.timegm(datetime(2026, 12, 31, 23, 0, tzinfo=timezone.utc).timetuple())
    assert datetime.fromtimestamp(period_bounds("month", december)[1], timezone.utc).year == 2027
    assert [format_reset(s) for s in (0.02, 1.5, 60, 360.25)] == ["20ms", "1.5s", "1m0s", "6m0.25s"]
