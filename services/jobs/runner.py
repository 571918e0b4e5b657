"""What the job tracker does: claim jobs, hand each to the executor, keep their leases.

PostgreSQL is the source of truth; the runner only coordinates. Each start is a new
incarnation with a lease token unique across every tracker (fencing). The runner takes
over its own earlier incarnations' leases at once, and any other tracker's only once they
expired, so two trackers can share a database (a rolling deploy) without stealing each
other's jobs. Every state change is compare-and-set on (status, token), so a runner that
lost its lease (presumed dead, or the job was cancelled) can no longer change the job: its
late result is discarded. Transcribing twice after a crash is possible; two results are not.

This module is the claim loop (poll, take over, claim, heartbeat, sweep); running one job
chunk by chunk is `execution.py`. Each turn's database work is its own unit of work, and
what it changed is announced through `JobEvents` after it committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.core.clock import utcnow
from services.core.db import transaction
from services.core.logging import get_logger
from services.core.metrics import telemetry
from services.core.settings import JobsSettings
from services.core.storage import AudioStorage
from services.jobs import failures
from services.jobs.execution import JobExecutor
from services.jobs.leases import LeaseRepository
from services.jobs.service import JobsService
from services.jobs.tables import Job
from services.jobs.views import JobView
from services.transcription.result_cache import ResultCache
from services.transcription.service import SpeakerLabeller, Transcriber

log = get_logger(__name__)

INCARNATION_MEMORY_S = 7 * 24 * 3600.0
"""Rows of incarnations silent this long are deleted (their leases expired long ago)."""


class JobRunner:
    def __init__(
        self,
        *,
        name: str,
        sessions: async_sessionmaker[AsyncSession],
        storage: AudioStorage,
        jobs: JobsService,
        results: ResultCache,
        transcriber: Transcriber,
        settings: JobsSettings,
        model_id: str,
        on_finished: Callable[[Job, float], Awaitable[None]] | None = None,
        speakers: SpeakerLabeller | None = None,
    ) -> None:
        self.name = name
        self._sessions = sessions
        self._jobs = jobs
        self._events = jobs.job_events
        self._executor = JobExecutor(
            sessions=sessions,
            storage=storage,
            events=self._events,
            results=results,
            transcriber=transcriber,
            settings=settings,
            on_finished=on_finished,
            speakers=speakers,
        )
        self._settings = settings
        self._model_id = model_id
        self.epoch = 0
        """This incarnation's lease token (`tracker_incarnations.token`)."""
        self.running: dict[str, asyncio.Task[None]] = {}
        self.loop_at: float | None = None
        """`time.monotonic()` of the loop's last turn: a stuck loop shows here."""
        self._last_purge = float("-inf")
        self.stopping = False
        """Set by `stop()`: no more claims."""
        self.sweeps = True
        """Whether this runner sweeps expired data (one runner per process is enough when a
        tracker runs one per served model)."""

    @property
    def model_id(self) -> str:
        """The model whose jobs this runner claims."""
        return self._model_id

    async def start(self) -> None:
        """Take a new token and take over every lease of earlier incarnations at once."""
        async with transaction(self._sessions) as session:
            repo = LeaseRepository(session)
            self.epoch = await repo.start_incarnation(
                name=self.name, model=self._model_id, now=utcnow()
            )
            lost = await repo.requeue_lost(name=self.name, token=self.epoch, now=utcnow())
            requeued = await _views(repo, lost)
        log.info("tracker_started", tracker=self.name, epoch=self.epoch, requeued=len(requeued))
        await self._events.announce(requeued)

    async def run_forever(self, wake: asyncio.Event) -> None:
        """Poll until cancelled. Returns only by raising: the caller treats that as fatal."""
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            while True:
                self.loop_at = time.monotonic()
                if heartbeat.done():  # it never ends by itself: a bug, so die loudly
                    heartbeat.result()
                    raise RuntimeError("the heartbeat stopped")
                try:
                    await self.tick()
                except Exception as exc:  # the database may be down: keep polling
                    log.warning("tracker_tick_failed", error=repr(exc), exc_info=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self._settings.poll_interval_s)
                wake.clear()
        finally:
            # Wait for them: a task cancelled a second time while its session rolls back
            # leaves that connection mid-transaction (on SQLite, holding the write lock
            # that `stop()` then needs).
            await _cancel_and_wait([heartbeat, *self.running.values()])

    async def stop(self) -> None:
        """A graceful stop: claim nothing more, give the running jobs back, sign off.

        The jobs in flight are cancelled and requeued without using up an attempt, so the
        next tracker (a rolling update's new replica) takes them at once instead of after
        their leases expire; their stored chunks are kept. The incarnation then no longer
        counts as serving its model. Call it after `run_forever` was cancelled.
        """
        self.stopping = True
        await _cancel_and_wait(list(self.running.values()))
        for attempt in range(1, 4):  # the database may be briefly unavailable
            try:
                async with transaction(self._sessions) as session:
                    repo = LeaseRepository(session)
                    released = await repo.release_leases(token=self.epoch, now=utcnow())
                    await repo.stop_incarnation(token=self.epoch, now=utcnow())
                    views = await _views(repo, released)
                break
            except Exception as exc:
                if attempt == 3:
                    raise
                log.warning("tracker_stop_retry", attempt=attempt, error=repr(exc))
                await asyncio.sleep(0.2 * attempt)
        log.info("tracker_stopped", tracker=self.name, epoch=self.epoch, released=len(released))
        await self._events.announce(views)

    async def tick(self) -> None:
        """Requeue lost jobs, fail unserved ones, claim what fits, now and then sweep."""
        now = utcnow()
        changed, claimed = await self._take_over_and_claim(now)
        for view in changed:
            log.info("job_taken_over_or_failed", job_id=view.id)
        await self._events.announce([*changed, *(JobView.of(job) for job in claimed)])
        telemetry.job_attempts(len(claimed))
        for job in claimed:
            if job.id not in self.running:
                self.running[job.id] = asyncio.create_task(self._run(job))
        loop_now = asyncio.get_running_loop().time()
        if self.sweeps and loop_now - self._last_purge > self._settings.sweep_interval_s:
            self._last_purge = loop_now
            await self._jobs.purge_expired()
            await self._forget_incarnations(now)

    async def _take_over_and_claim(self, now: datetime) -> tuple[list[JobView], list[Job]]:
        """One unit of work: the jobs it requeued or failed (as views), and those it claimed."""
        slots = 0 if self.stopping else self._settings.max_concurrent - len(self.running)
        async with transaction(self._sessions) as session:
            repo = LeaseRepository(session)
            changed = await repo.requeue_lost(name=self.name, token=self.epoch, now=now)
            changed += await repo.fail_unserved(
                served_model=self._model_id,
                grace_s=self._settings.model_grace_s,
                message=failures.model_not_served,
                now=now,
            )
            claimed = await repo.claim(
                model=self._model_id,
                epoch=self.epoch,
                limit=max(slots, 0),
                now=now,
                lease_s=self._settings.lease_s,
                exclude=list(self.running),
            ) if slots > 0 else []  # fmt: skip
            return await _views(repo, changed), claimed

    async def _forget_incarnations(self, now: datetime) -> None:
        async with transaction(self._sessions) as session:
            await LeaseRepository(session).forget_incarnations(
                before=now - timedelta(seconds=INCARNATION_MEMORY_S)
            )

    async def drain(self) -> None:
        """Wait for the jobs in flight (tests and graceful stops)."""
        while self.running:
            await asyncio.gather(*self.running.values(), return_exceptions=True)

    def heartbeat_interval_s(self) -> float:
        """Often enough to keep leases and to show the model served well within its grace."""
        return min(self._settings.lease_s, self._settings.model_grace_s) / 3

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s())
            now = utcnow()
            until = now + timedelta(seconds=self._settings.lease_s)
            try:
                async with transaction(self._sessions) as session:
                    await LeaseRepository(session).heartbeat(
                        token=self.epoch, job_ids=list(self.running), until=until, now=now
                    )
            except Exception as exc:
                log.warning("heartbeat_failed", error=repr(exc))

    async def _run(self, job: Job) -> None:
        try:
            await self._executor.run(job, self.epoch)
        finally:
            self.running.pop(job.id, None)


async def _cancel_and_wait(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel each task once (never again while it is unwinding) and wait until all ended."""
    for task in tasks:
        if not task.done() and not task.cancelling():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _views(repo: LeaseRepository, job_ids: list[str]) -> list[JobView]:
    """The jobs as this transaction left them, for announcing once it committed."""
    return [JobView.of(job) for job in await repo.get_many(job_ids)] if job_ids else []
