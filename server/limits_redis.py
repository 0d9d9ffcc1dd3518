"""Per-key limits shared by every gateway worker and pod through Redis (INGOT_REDIS_URL).

The same rules as `LocalLimiter` (server/limits.py), each admission and release one Lua script, so two
gateways never both take a key's last request or concurrency slot. A key's counters share one hash tag and
so one Redis Cluster slot. Windows are computed from the gateway's clock (keep pods on NTP). If Redis cannot
be reached the request is let through and the error logged: limits fail open, serving does not stop.
"""
from __future__ import annotations

import logging
import time
import uuid

from server.limits import Counts, Grant, KeyLimits, period_bounds, rate_limited

log = logging.getLogger("ingot.gateway")
BROKEN = {1: "concurrency", 2: "requests", 3: "tokens", 4: "quota"}

ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local active = redis.call('ZCARD', KEYS[1])
local requests = tonumber(redis.call('GET', KEYS[2]) or '0')
local tokens = tonumber(redis.call('GET', KEYS[3]) or '0')
local used = tonumber(redis.call('GET', KEYS[4]) or '0')
local broken = 0
if tonumber(ARGV[4]) > 0 and active >= tonumber(ARGV[4]) then broken = 1
elseif tonumber(ARGV[5]) > 0 and requests >= tonumber(ARGV[5]) then broken = 2
elseif tonumber(ARGV[6]) > 0 and tokens >= tonumber(ARGV[6]) then broken = 3
elseif tonumber(ARGV[7]) > 0 and used >= tonumber(ARGV[7]) then broken = 4 end
if broken == 0 then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[9])
  requests = redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], ARGV[8])
  active = active + 1
end
return {broken, active, requests, tokens, used}
"""

RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local used = redis.call('INCRBY', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[4])
if tonumber(ARGV[2]) > 0 then
  redis.call('INCRBY', KEYS[2], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return used
"""


def _keys(key_id: str, limits: KeyLimits, now: float) -> tuple[list[str], int]:
    minute = period_bounds("minute", now)[0]
    period_start, period_end = period_bounds(limits.quota_period, now)
    tag = f"ingot:{{{key_id}}}"
    keys = [f"{tag}:active", f"{tag}:requests:{minute}", f"{tag}:tokens:{minute}", f"{tag}:quota:{period_start}"]
    return keys, period_end - int(now) + 3600  # quota counters outlive their period a little, for reading


class RedisLimiter:
    def __init__(self, url: str, lease_s: float = 900.0, timeout_s: float = 2.0):
        import redis.asyncio as redis

        self.lease_s = lease_s
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._admit = self._redis.register_script(ADMIT)
        self._release = self._redis.register_script(RELEASE)

    async def admit(self, key_id: str, limits: KeyLimits, now: float | None = None) -> Grant:
        now = time.time() if now is None else now
        keys, quota_ttl = _keys(key_id, limits, now)
        lease = uuid.uuid4().hex
        args = [now, now + self.lease_s, lease, limits.concurrency or 0, limits.rpm or 0, limits.tpm or 0,
                limits.quota or 0, 120, int(self.lease_s) + 60]
        try:
            broken, *values = await self._admit(keys=keys, args=args)
        except Exception as exc:  # noqa: BLE001 - any Redis failure: serve, and say so in the log
            log.warning("rate limits not applied (Redis: %s: %s)", type(exc).__name__, exc)
            return Grant(key_id, limits, lease, Counts(), now)
        counts = Counts(*(int(v) for v in values))
        if broken:
            raise rate_limited(BROKEN[int(broken)], limits, counts, now)
        return Grant(key_id, limits, lease, counts, now)

    async def release(self, grant: Grant, tokens: int, now: float | None = None) -> int:
        now = time.time() if now is None else now
        keys, quota_ttl = _keys(grant.key_id, grant.limits, now)
        try:
            return int(await self._release(keys=[keys[0], keys[2], keys[3]],
                                           args=[grant.lease, tokens, 120, quota_ttl]))
        except Exception as exc:  # noqa: BLE001
            log.warning("usage not recorded in Redis (%s: %s)", type(exc).__name__, exc)
            return 0

    async def close(self) -> None:
        await self._redis.aclose()
