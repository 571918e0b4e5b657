"""Readiness: run named checks concurrently, each bounded by a timeout.

A required check that fails makes the service unready (503); an optional one is only
reported, so a degraded dependency (a cache) never takes the service out of rotation.

Checks that would cost a remote call on the probe's path (the model replica, the job
tracker) are `HeldStatus`es instead: a `Refresher` updates them on background threads and
the probe only reads them, so readiness answers at once however loaded the service is and
never waits in the transcription queue. A held value older than its `max_age_s` counts as
down: a refresher that hangs must not keep reporting the last good news.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from services.core.logging import get_logger

log = get_logger(__name__)

Check = Callable[[], Awaitable[bool]]
Report = Callable[[], Awaitable[bool | str]]
"""An optional check may answer a state of its own (e.g. `per_process`) instead of ok/down."""
Probe = Callable[[], bool]


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, str]


class ReadinessService:
    def __init__(
        self,
        required: dict[str, Check],
        optional: Mapping[str, Report] | None = None,
        *,
        timeout_s: float = 2.0,
    ) -> None:
        self._required = required
        self._optional = dict(optional or {})
        self._timeout_s = timeout_s

    def add_optional(self, name: str, check: Report) -> None:
        self._optional[name] = check

    async def check(self) -> Readiness:
        checks: dict[str, Report] = {**self._required, **self._optional}
        outcomes = await asyncio.gather(*(self._run(name, c) for name, c in checks.items()))
        statuses = dict(zip(checks, outcomes, strict=True))
        ready = all(statuses[name] == "ok" for name in self._required)
        return Readiness(ready=ready, checks=statuses)

    async def _run(self, name: str, check: Report) -> str:
        try:
            ok = await asyncio.wait_for(check(), self._timeout_s)
        except Exception as exc:
            log.warning("readiness_check_failed", check=name, error=repr(exc))
            return "down"
        if isinstance(ok, str):
            return ok
        return "ok" if ok else "down"


class HeldStatus:
    """A check answered from a value someone else keeps up to date; usable as a `Check`."""

    def __init__(
        self,
        *,
        ok: bool = False,
        max_age_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._max_age_s = max_age_s
        self._ok = ok
        self._at = clock()

    def set(self, ok: bool) -> None:
        # Two plain assignments: a reader on another thread sees an old or a new value,
        # and an old timestamp only makes it look staler, never healthier.
        self._at = self._clock()
        self._ok = ok

    @property
    def ok(self) -> bool:
        if self._max_age_s is not None and self._clock() - self._at > self._max_age_s:
            return False
        return self._ok

    async def __call__(self) -> bool:
        return self.ok


class Refresher:
    """Runs blocking probes every `interval_s`, each on a daemon thread of its own (a hung
    probe stalls only itself, and its status goes stale), recording each in its status."""

    def __init__(self, probes: dict[str, tuple[HeldStatus, Probe]], *, interval_s: float) -> None:
        self._probes = probes
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._last: dict[str, bool] = {}

    def refresh_once(self, name: str) -> bool:
        status, probe = self._probes[name]
        error = None
        try:
            ok = bool(probe())
        except Exception as exc:
            ok, error = False, repr(exc)
        if ok != self._last.get(name):  # log changes, not every refresh of a long outage
            (log.info if ok else log.warning)("health_changed", probe=name, ok=ok, error=error)
        self._last[name] = ok
        status.set(ok)
        return ok

    def start(self) -> None:
        for name in self._probes:
            threading.Thread(
                target=self._run, args=(name,), name=f"health-{name}", daemon=True
            ).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, name: str) -> None:
        while not self._stop.is_set():
            self.refresh_once(name)
            self._stop.wait(self._interval_s)
