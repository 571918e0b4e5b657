"""GCRA (generic cell rate algorithm): a token bucket kept as one timestamp per key.

A quota of `limit` units per `period_s` spaces units `period_s / limit` apart and tolerates
a burst of the whole `limit`. The state is the "theoretical arrival time" (TAT): the moment
the bucket would be full again. Taking `cost` units moves it `cost * interval` later; that is
refused when the new TAT would lie more than `period_s` ahead. A forced take (reconciling a
job's real length after the fact) always moves it, so the debt delays later requests.

`GCRA_LUA` does the read, decision and write in one Redis script (atomic; the clock is
Redis's own `TIME`, so replicas agree); `MemoryGcra` does the same in one process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

PRUNE_EVERY = 1024
"""The per-process table drops keys whose bucket is full again every this many takes."""

TOLERANCE_S = 1e-3
"""A take is refused only when it would be due more than this after now. `tat + interval -
period` is float arithmetic on clock-sized numbers: without a margin, the last unit of a
full burst (the only one, for a limit of 1) was refused about one time in four."""


@dataclass(frozen=True)
class Quota:
    limit: float
    period_s: float

    @property
    def interval_s(self) -> float:
        return self.period_s / self.limit


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: float
    remaining: int
    retry_after_s: float
    """0 when allowed; else how long until the same take would pass."""
    reset_s: float
    """How long until the bucket is full again (the `RateLimit-Reset` header)."""


def decide(quota: Quota, used_s: float, retry_after_s: float, allowed: bool) -> Decision:
    """A decision from the bucket's fill (`used_s`: TAT minus now, after the take)."""
    used_s = max(0.0, used_s)
    remaining = max(0, math.floor((quota.period_s - used_s) / quota.interval_s + 1e-9))
    return Decision(allowed, quota.limit, remaining, max(0.0, retry_after_s), used_s)


class MemoryGcra:
    """The per-process table: exact within one process, used while Redis is down."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._takes = 0

    def take(self, key: str, quota: Quota, cost: float, *, force: bool = False) -> Decision:
        now = self._clock()
        self._takes += 1
        if self._takes % PRUNE_EVERY == 0:
            self._tat = {k: v for k, v in self._tat.items() if v > now}
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + cost * quota.interval_s
        allow_at = new_tat - quota.period_s
        if allow_at > now + TOLERANCE_S and not force:
            return decide(quota, tat - now, allow_at - now, allowed=False)
        self._tat[key] = new_tat
        return decide(quota, new_tat - now, 0.0, allowed=True)


# KEYS[1]: the bucket; ARGV: interval (ms per unit), period (ms), cost (units), force (0/1),
# tolerance (ms, TOLERANCE_S).
# Returns {allowed, used_ms, retry_after_ms}; numbers as strings (Lua floats would be
# truncated to integers on the way out). The key expires when the bucket is full again.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allow_at = new_tat - period
if allow_at > now + tonumber(ARGV[5]) and ARGV[4] ~= '1' then
  return {0, tostring(tat - now), tostring(allow_at - now)}
end
local ttl = math.ceil(new_tat - now)
if ttl > 0 then
  redis.call('SET', KEYS[1], tostring(new_tat), 'PX', ttl)
else
  redis.call('DEL', KEYS[1])
end
return {1, tostring(new_tat - now), '0'}
"""
