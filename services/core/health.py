"""Readiness: run named checks concurrently, each bounded by a timeout.

A required check that fails makes the service unready (503); an optional one is only
reported, so a degraded dependency (a cache) never takes the service out of rotation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.core.logging import get_logger

log = get_logger(__name__)

Check = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, str]


class ReadinessService:
    def __init__(
        self,
        required: dict[str, Check],
        optional: dict[str, Check] | None = None,
        *,
        timeout_s: float = 2.0,
    ) -> None:
        self._required = required
        self._optional = optional or {}
        self._timeout_s = timeout_s

    async def check(self) -> Readiness:
        checks = {**self._required, **self._optional}
        outcomes = await asyncio.gather(*(self._run(name, c) for name, c in checks.items()))
        statuses = dict(zip(checks, outcomes, strict=True))
        ready = all(statuses[name] == "ok" for name in self._required)
        return Readiness(ready=ready, checks=statuses)

    async def _run(self, name: str, check: Check) -> str:
        try:
            ok = await asyncio.wait_for(check(), self._timeout_s)
        except Exception as exc:
            log.warning("readiness_check_failed", check=name, error=repr(exc))
            return "down"
        return "ok" if ok else "down"
