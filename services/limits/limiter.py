"""Requests per period and audio-seconds per period, per user: Redis first, never unlimited.

Every take is one GCRA script call in Redis, shared by all ingress replicas and the job
tracker. When Redis fails (or its circuit breaker is open) the take is counted in this
process's own table instead: each process then allows at most the whole quota, so the
limits stay in force (looser by the number of processes) rather than disappear. `mode`
says which is in use; /readyz reports it.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from services.core.cache import CircuitBreaker
from services.core.logging import get_logger
from services.core.settings import LimitsSettings, RedisSettings
from services.limits.gcra import GCRA_LUA, TOLERANCE_S, Decision, MemoryGcra, Quota, decide

log = get_logger(__name__)

KEY_PREFIX = "rayscribe:limits:"


class Kind(StrEnum):
    REQUESTS = "requests"
    AUDIO_SECONDS = "audio_s"


class Mode(StrEnum):
    SHARED = "ok"
    """Counted in Redis, shared by every process."""
    PER_PROCESS = "per_process"
    """Redis unreachable or not configured: counted in each process (never unlimited)."""


_FAILED = object()


class UsageLimiter:
    def __init__(
        self,
        settings: LimitsSettings,
        redis: RedisSettings,
        *,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._quotas: dict[Kind, Quota] = {}
        if settings.requests_per_minute is not None:
            self._quotas[Kind.REQUESTS] = Quota(
                settings.requests_per_minute, settings.requests_period_s
            )
        if settings.audio_seconds_per_hour is not None:
            self._quotas[Kind.AUDIO_SECONDS] = Quota(
                settings.audio_seconds_per_hour, settings.audio_period_s
            )
        self._memory = MemoryGcra()
        self._warn_every_s = settings.fallback_warning_s
        self._warned_at = float("-inf")
        self._client: Any = None
        self._script: Any = None
        self._breaker = breaker or CircuitBreaker(redis.breaker_failures, redis.breaker_reset_s)
        if redis.url is not None and self._quotas:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(
                redis.url.get_secret_value(),
                socket_timeout=redis.timeout_s,
                socket_connect_timeout=redis.timeout_s,
                decode_responses=True,
            )
            self._script = self._client.register_script(GCRA_LUA)

    def quota(self, kind: Kind) -> Quota | None:
        return self._quotas.get(kind)

    @property
    def enabled(self) -> bool:
        return bool(self._quotas)

    @property
    def mode(self) -> Mode:
        if self._client is None or not self._breaker.healthy:
            return Mode.PER_PROCESS
        return Mode.SHARED

    async def take(
        self, kind: Kind, key: str, cost: float = 1.0, *, force: bool = False
    ) -> Decision | None:
        """Charge `cost` units to `key`; None when this kind is unlimited. A refused take
        charges nothing; a forced one always charges (and may leave the user in debt)."""
        quota = self._quotas.get(kind)
        if quota is None:
            return None
        if self._client is not None:
            bucket = f"{KEY_PREFIX}{kind.value}:{key}"
            args = [
                quota.interval_s * 1000,
                quota.period_s * 1000,
                cost,
                "1" if force else "0",
                TOLERANCE_S * 1000,
            ]

            async def run() -> Any:
                return await self._script(keys=[bucket], args=args)

            reply: Any = await self._breaker.call(run, _FAILED)
            if reply is not _FAILED:
                allowed, used_ms, retry_ms = reply
                return decide(quota, float(used_ms) / 1000, float(retry_ms) / 1000, bool(allowed))
        self._warn_fallback()
        return self._memory.take(f"{kind.value}:{key}", quota, cost, force=force)

    async def status(self) -> str:
        """For /readyz: `ok` (shared in Redis) or `per_process`; pings Redis through the
        breaker (skipped while it is open), so a recovered Redis is noticed here too."""
        if self._client is not None:

            async def ping() -> bool:
                return bool(await self._client.ping())

            await self._breaker.call(ping, False)
        return self.mode.value

    def _warn_fallback(self) -> None:
        now = time.monotonic()
        if self._client is not None and now - self._warned_at >= self._warn_every_s:
            self._warned_at = now
            log.warning("rate_limits_per_process", reason="redis unavailable")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
