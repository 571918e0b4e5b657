"""Gauges read from the database, exported by one tracker however many replicas run.

Every tracker samples every `SAMPLE_INTERVAL_S` (10 s): its own heartbeat age (each exports
that), and whether it is the exporter of the shared figures: the live incarnation
(heartbeat within `lease_s`, not stopped) with the smallest lease token. Only that one
counts jobs (and bulk batches) by state and the oldest queued job's age; a tracker that
is not the exporter, or stopped being it, exports zeros, so a `sum by (state)` over the
replicas' series is right at any moment, through rolling updates and restarts alike.
No lock is held and nothing is written: the choice is a read of `tracker_incarnations`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.bulk.batches_repository import BatchRepository
from services.bulk.batches_tables import BatchState
from services.core.clock import utcnow
from services.core.db import transaction
from services.core.logging import get_logger
from services.core.metrics import Telemetry, telemetry
from services.jobs.repository import Repository
from services.jobs.tables import Job, JobStatus, TrackerIncarnation

log = get_logger(__name__)

SAMPLE_INTERVAL_S = 10.0
"""Counting jobs by state reads the jobs index; every 10 s from one tracker is cheap."""
STATES = tuple(status.value for status in JobStatus)
BATCH_STATES = tuple(state.value for state in BatchState)


class JobMetricsRepository(Repository):
    async def exporter_token(self, *, alive_since: datetime) -> int | None:
        """The smallest token among live incarnations: that tracker exports."""
        token = await self.session.scalar(
            select(func.min(TrackerIncarnation.token)).where(
                TrackerIncarnation.stopped_at.is_(None),
                TrackerIncarnation.heartbeat_at >= alive_since,
            )
        )
        return None if token is None else int(token)

    async def heartbeat_at(self, token: int) -> datetime | None:
        value: datetime | None = await self.session.scalar(
            select(TrackerIncarnation.heartbeat_at).where(TrackerIncarnation.token == token)
        )
        return value

    async def jobs_by_state(self) -> dict[str, int]:
        rows = await self.session.execute(select(Job.status, func.count()).group_by(Job.status))
        return {str(status): int(count) for status, count in rows.all()}

    async def oldest_queued_at(self) -> datetime | None:
        value: datetime | None = await self.session.scalar(
            select(func.min(Job.created_at)).where(Job.status == JobStatus.QUEUED.value)
        )
        return value


class JobMetricsSampler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        token: Callable[[], int],
        lease_s: float,
        recorder: Telemetry = telemetry,
    ) -> None:
        self._sessions = sessions
        self._token = token
        self._lease_s = lease_s
        self._telemetry = recorder
        self._exported: set[str] = set()
        self._batches_exported = False
        self._heartbeat: datetime | None = None
        """This tracker's last heartbeat as read from the database."""

    async def sample(self) -> bool:
        """One sample; True when this tracker exported the shared figures."""
        now = utcnow()
        try:
            async with transaction(self._sessions) as session:
                repo = JobMetricsRepository(session)
                self._heartbeat = await repo.heartbeat_at(self._token()) or self._heartbeat
                alive_since = now - timedelta(seconds=self._lease_s)
                exporting = await repo.exporter_token(alive_since=alive_since) == self._token()
                if exporting:
                    counts = {state: 0 for state in STATES} | await repo.jobs_by_state()
                    oldest = await repo.oldest_queued_at()
        finally:
            self._record_heartbeat()
        if not exporting:
            self._stand_down()
            return False
        age_s = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
        self._telemetry.jobs_by_state(counts, age_s)
        self._exported |= set(counts)
        await self._sample_batches()
        return True

    def _record_heartbeat(self) -> None:
        """Age from the last heartbeat seen, growing while the database cannot be read."""
        if self._heartbeat is not None:
            age_s = (utcnow() - self._heartbeat).total_seconds()
            self._telemetry.heartbeat_age(max(0.0, age_s))

    def _stand_down(self) -> None:
        if self._exported:
            self._telemetry.jobs_by_state(dict.fromkeys(self._exported, 0), 0.0)
        if self._batches_exported:
            self._telemetry.batches_by_state(dict.fromkeys(BATCH_STATES, 0))

    async def _sample_batches(self) -> None:
        try:
            async with transaction(self._sessions) as session:
                counts = await BatchRepository(session).count_by_state()
        except Exception:  # no batches table (yet): nothing to export
            return
        # Every state is a series from the start (at 0), like the jobs': an alert or panel
        # on `rayscribe_batches` has something to read before the first batch exists.
        counts = dict.fromkeys(BATCH_STATES, 0) | counts
        self._telemetry.batches_by_state(counts)
        self._batches_exported = True

    async def run_forever(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        while True:
            try:
                await self.sample()
            except Exception as exc:  # the database may be down: the next sample will tell
                log.debug("job_metrics_sample_failed", error=repr(exc))
            await asyncio.sleep(interval_s)


def start(sampler: JobMetricsSampler) -> asyncio.Task[None]:
    """Run the sampler on the running loop; cancel the task to stop it."""
    task = asyncio.get_running_loop().create_task(sampler.run_forever())
    task.add_done_callback(_retrieve)
    return task


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # run_forever only ends by cancellation; keep asyncio quiet
