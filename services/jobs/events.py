"""Telling the world about committed job changes: the status cache, the events, the nudge.

The one place both the jobs service (ingress and sweeps) and the tracker's runner go
through, so the cache keys, the event channel and the versioning rule live once. Redis,
when configured, caches status reads and carries events; it is told about a change only
after the change committed and is never needed for correctness. Every cached status
carries the row's `version` and is written with `set_if_newer`, so a late writer holding
an older view never replaces a newer one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from services.core.cache import Cache
from services.core.logging import get_logger
from services.jobs.tables import FINISHED, JobStatus
from services.jobs.views import JobView

log = get_logger(__name__)

STATUS_KEY = "rayscribe:job:{}"
EVENTS_CHANNEL = "rayscribe:job-events:{}"
EVENT_POLL_S = 1.0
"""How often a follower without a shared cache re-reads the job."""


class JobEvents:
    def __init__(self, *, cache: Cache, status_ttl_s: int, nudge: Callable[[], None]) -> None:
        self._cache = cache
        self._status_ttl_s = status_ttl_s
        self._nudge = nudge

    @property
    def shared(self) -> bool:
        """Whether other processes see the cached statuses and events (Redis)."""
        return self._cache.shared

    async def changed(self, view: JobView) -> None:
        """After a committed change: refresh the status cache, publish the event, and nudge
        the tracker when the job is (again) waiting."""
        if self._cache.shared:
            payload = view.model_dump_json()
            await self.remember(view, payload)
            await self._cache.publish(EVENTS_CHANNEL.format(view.id), payload)
        if view.status is JobStatus.QUEUED:
            self._nudge()

    async def announce(self, views: Iterable[JobView]) -> None:
        """`changed` for each view, for callers whose change is already committed and must
        not fail because of its announcement (the runner): a failure is only logged."""
        for view in views:
            try:
                await self.changed(view)
            except Exception as exc:
                log.warning("job_event_not_published", job_id=view.id, error=repr(exc))

    async def cached(self, job_id: str) -> JobView | None:
        """The cached status, or None (a miss, or no shared cache: a process-local copy
        would go stale, since the tracker writes from another process)."""
        if not self._cache.shared:
            return None
        cached = await self._cache.get(STATUS_KEY.format(job_id))
        return JobView.model_validate_json(cached) if cached else None

    async def remember(self, view: JobView, payload: str | None = None) -> None:
        """Cache `view` unless the cache already holds a newer version of the job."""
        if self._cache.shared:
            await self._cache.set_if_newer(
                STATUS_KEY.format(view.id),
                payload or view.model_dump_json(),
                view.version,
                self._status_ttl_s,
            )

    async def evict(self, job_ids: list[str]) -> None:
        """Drop cached statuses (the jobs were forgotten or deleted)."""
        if self._cache.shared:
            for job_id in job_ids:
                await self._cache.delete(STATUS_KEY.format(job_id))

    async def follow(
        self,
        job_id: str,
        first: Callable[[], Awaitable[JobView]],
        read: Callable[[str], Awaitable[JobView]],
    ) -> AsyncIterator[JobView]:
        """Status changes of one job until it finishes: pub/sub when shared, else polling.

        `first()` gives the starting view (and raises for a job the caller may not see);
        `read(job_id)` the job as the database has it now. The database is re-read whenever
        the subscription is quiet, so a change published between the first read and the
        subscription is never missed.
        """
        view = await first()
        yield view
        if view.status in FINISHED:
            return
        subscription = (
            self._cache.subscribe(EVENTS_CHANNEL.format(job_id)) if self._cache.shared else None
        )
        last = view
        try:
            while last.status not in FINISHED:
                if subscription is not None:
                    message = await anext(subscription)
                    if message:
                        current = JobView.model_validate_json(message)
                    else:  # quiet: look at the row, in case a message was missed
                        current = await read(job_id)
                else:
                    await asyncio.sleep(EVENT_POLL_S)
                    current = await read(job_id)
                # Messages may arrive out of order (two writers): never step back in time.
                if current != last and current.version >= last.version:
                    last = current
                    yield current
        finally:
            if subscription is not None:
                await subscription.aclose()  # type: ignore[attr-defined]
