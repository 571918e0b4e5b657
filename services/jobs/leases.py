"""The job tracker's SQL: incarnations, leases, and what a running job writes under its lease.

Each tracker start is an incarnation whose token is a lease token no other tracker holds
(fencing). A claimed job is leased to one token; every write a running job makes names
that token, so once the lease is lost (expired and taken over, or the job cancelled) the
holder's late writes change nothing and return False. Like every repository, this one
never commits: the runner's unit of work that opened the session does.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update

from services.jobs.failures import ATTEMPTS_EXHAUSTED, LOST_EVERY_ATTEMPT, MODEL_NOT_SERVED
from services.jobs.repository import Repository
from services.jobs.tables import (
    Job,
    JobChunk,
    JobResult,
    JobSpeakerReference,
    JobSpeakers,
    JobStatus,
    TrackerIncarnation,
)


class LeaseRepository(Repository):
    # -- incarnations --------------------------------------------------------------------

    async def start_incarnation(self, *, name: str, model: str, now: datetime) -> int:
        """Record a tracker (re)start; its token is a lease token no other tracker holds."""
        token = await self.session.scalar(
            self._insert(TrackerIncarnation)
            .values(name=name, model=model, started_at=now, heartbeat_at=now)
            .returning(TrackerIncarnation.token)
        )
        assert token is not None
        return int(token)

    async def stop_incarnation(self, *, token: int, now: datetime) -> None:
        """A clean stop: the incarnation no longer counts as serving its model."""
        await self.session.execute(
            update(TrackerIncarnation)
            .where(TrackerIncarnation.token == token)
            .values(stopped_at=now, heartbeat_at=now)
        )

    async def heartbeat(
        self, *, token: int, job_ids: list[str], until: datetime, now: datetime
    ) -> None:
        """The incarnation is alive (its model is served) and keeps its jobs' leases."""
        await self.session.execute(
            update(TrackerIncarnation)
            .where(TrackerIncarnation.token == token)
            .values(heartbeat_at=now)
        )
        if job_ids:
            await self.renew(epoch=token, job_ids=job_ids, until=until)

    async def forget_incarnations(self, *, before: datetime) -> int:
        """Delete rows of incarnations silent since `before` (their leases expired long ago)."""
        deleted = await self.session.execute(
            delete(TrackerIncarnation)
            .where(TrackerIncarnation.heartbeat_at < before)
            .returning(TrackerIncarnation.token)
        )
        return len(deleted.all())

    # -- leases -------------------------------------------------------------------------

    async def requeue_lost(self, *, name: str, token: int, now: datetime) -> list[str]:
        """Take over lost leases: requeue their jobs; returns the ids of the jobs changed.

        A lease is lost when it expired (whichever tracker and model held it) or when it
        belongs to an earlier incarnation of this same tracker, which is dead: that one is
        taken over at once. Another live tracker's leases are never touched. A job that
        already used all its attempts fails instead of looping forever: a tracker that died
        while running it may have died of it.
        """
        lost = and_(
            Job.status == JobStatus.RUNNING,
            or_(
                Job.lease_epoch.is_(None),
                Job.lease_expires_at.is_(None),
                Job.lease_expires_at < now,
                and_(Job.lease_owner == name, Job.lease_epoch < token),
            ),
        )
        failed = await self.session.execute(
            update(Job)
            .where(lost, Job.attempts >= Job.max_attempts)
            .values(
                version=Job.version + 1,
                status=JobStatus.FAILED,
                error=LOST_EVERY_ATTEMPT,
                error_code=ATTEMPTS_EXHAUSTED,
                finished_at=now,
                updated_at=now,
                lease_epoch=None,
                lease_expires_at=None,
            )
            .returning(Job.id)
        )
        requeued = await self.session.execute(
            update(Job)
            .where(lost)
            .values(
                version=Job.version + 1,
                status=JobStatus.QUEUED,
                next_attempt_at=now,
                updated_at=now,
                lease_epoch=None,
                lease_expires_at=None,
            )
            .returning(Job.id)
        )
        return [row[0] for row in failed.all()] + [row[0] for row in requeued.all()]

    async def release_leases(self, *, token: int, now: datetime) -> list[str]:
        """A graceful stop: requeue the incarnation's running jobs for any tracker at once.

        Stopping is not the job's fault, so the attempt `claim` counted is given back.
        """
        released = await self.session.execute(
            update(Job)
            .where(Job.status == JobStatus.RUNNING, Job.lease_epoch == token)
            .values(
                version=Job.version + 1,
                status=JobStatus.QUEUED,
                attempts=Job.attempts - 1,
                next_attempt_at=now,
                updated_at=now,
                lease_epoch=None,
                lease_expires_at=None,
            )
            .returning(Job.id)
        )
        return [row[0] for row in released.all()]

    async def fail_unserved(
        self,
        *,
        served_model: str,
        grace_s: float,
        message: Callable[[str, float], str],
        now: datetime,
    ) -> list[str]:
        """Fail queued jobs of models no tracker has served for `grace_s`; returns their ids.

        A model is served while an incarnation for it heartbeats; a job must also have
        waited `grace_s` itself (since it was queued or last requeued), so a rolling deploy
        that briefly has no tracker loses nothing. `message(model, grace_s)` is the error.
        """
        since = now - timedelta(seconds=grace_s)
        served = (
            select(TrackerIncarnation.token)
            .where(
                TrackerIncarnation.model == Job.model,
                TrackerIncarnation.heartbeat_at >= since,
                TrackerIncarnation.stopped_at.is_(None),
            )
            .exists()
        )
        stale = select(Job.id, Job.model).where(
            Job.status == JobStatus.QUEUED,
            Job.model != served_model,
            Job.updated_at < since,
            ~served,
        )
        failed: list[str] = []
        for job_id, model in (await self.session.execute(stale)).all():
            if await self._compare_and_set(
                and_(Job.id == job_id, Job.status == JobStatus.QUEUED),
                status=JobStatus.FAILED,
                error=message(model, grace_s),
                error_code=MODEL_NOT_SERVED,
                finished_at=now,
                updated_at=now,
            ):
                failed.append(job_id)
        return failed

    async def claim(
        self,
        *,
        model: str,
        epoch: int,
        limit: int,
        now: datetime,
        lease_s: float,
        exclude: Collection[str] = (),
    ) -> list[Job]:
        """Atomically move up to `limit` due jobs from queued to running under `epoch`.

        `epoch` is an incarnation's token; the lease also names its tracker (`lease_owner`),
        so that tracker's next incarnation can take it over at once. `exclude` are jobs the
        caller still winds down (just requeued): claimed now, nobody would run them.
        """
        due = (
            select(Job.id)
            .where(
                Job.status == JobStatus.QUEUED,
                Job.model == model,
                Job.next_attempt_at <= now,
                Job.id.not_in(list(exclude)),
            )
            .order_by(Job.created_at)
            .limit(limit)
        )
        if self._postgres:
            due = due.with_for_update(skip_locked=True)
        # Materialised: inlined, PostgreSQL may run the subquery more than once, and with
        # SKIP LOCKED each run picks other rows, so one claim could take more than `limit`.
        chosen = due.cte("due").prefix_with("MATERIALIZED", dialect="postgresql")
        owner = (
            select(TrackerIncarnation.name)
            .where(TrackerIncarnation.token == epoch)
            .scalar_subquery()
        )
        claimed = await self.session.scalars(
            update(Job)
            .where(Job.id.in_(select(chosen.c.id)), Job.status == JobStatus.QUEUED)
            .values(
                version=Job.version + 1,
                status=JobStatus.RUNNING,
                attempts=Job.attempts + 1,
                lease_epoch=epoch,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_s),
                started_at=func.coalesce(Job.started_at, now),
                updated_at=now,
            )
            .returning(Job)
            .execution_options(populate_existing=True)
        )
        return list(claimed)

    async def renew(self, *, epoch: int, job_ids: list[str], until: datetime) -> None:
        await self.session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == JobStatus.RUNNING, Job.lease_epoch == epoch)
            .values(lease_expires_at=until)
        )

    def _held(self, job_id: str, epoch: int) -> Any:
        return and_(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_epoch == epoch)

    # -- a running job: its chunks, its cut points, its way out -------------------------

    async def chunks(self, job_id: str) -> dict[int, dict[str, Any]]:
        rows = await self.session.scalars(select(JobChunk).where(JobChunk.job_id == job_id))
        return {row.index: row.transcript for row in rows}

    async def cut_points(self, job_id: str) -> list[float]:
        """The chunk boundaries recorded so far (see `execution.py`): empty for a fresh job."""
        stored = await self.session.scalar(select(Job.cut_points).where(Job.id == job_id))
        return [float(value) for value in stored or []]

    async def save_chunk(self, job_id: str, index: int, transcript: dict[str, Any]) -> None:
        await self.session.execute(
            self._insert(JobChunk)
            .values(job_id=job_id, index=index, transcript=transcript)
            .on_conflict_do_nothing()
        )

    async def save_speaker_turns(
        self, job_id: str, turns: list[dict[str, Any]], now: datetime
    ) -> None:
        """Kept once: a late second diarization of the same job never replaces the first.
        The known speakers' references are no longer needed once the turns are named."""
        await self.session.execute(
            self._insert(JobSpeakers)
            .values(job_id=job_id, turns=turns, created_at=now)
            .on_conflict_do_nothing()
        )
        await self.session.execute(
            delete(JobSpeakerReference).where(JobSpeakerReference.job_id == job_id)
        )

    async def record_cut_points(self, *, job_id: str, epoch: int, cut_points: list[float]) -> bool:
        """Store the boundaries decided so far; False if the job is no longer this runner's."""
        changed = await self.session.execute(
            update(Job)
            .where(self._held(job_id, epoch))
            .values(version=Job.version + 1, cut_points=cut_points)
            .returning(Job.id)
        )
        return changed.first() is not None

    async def _leave(self, job_id: str, epoch: int, now: datetime, **values: Any) -> bool:
        """running (under `epoch`) -> another state, giving the lease back."""
        return await self._compare_and_set(
            self._held(job_id, epoch),
            updated_at=now,
            lease_epoch=None,
            lease_expires_at=None,
            **values,
        )

    async def progress(
        self, *, job_id: str, epoch: int, done: int, total: int | None, duration_s: float | None
    ) -> bool:
        return await self._compare_and_set(
            self._held(job_id, epoch),
            progress_done=done,
            progress_total=total,
            audio_duration_s=duration_s,
        )

    async def succeed(
        self,
        *,
        job_id: str,
        epoch: int,
        transcript: dict[str, Any],
        duration_s: float,
        now: datetime,
    ) -> bool:
        """running -> succeeded and the one result row, together; False if no longer ours."""
        if not await self._leave(
            job_id,
            epoch,
            now,
            status=JobStatus.SUCCEEDED,
            error=None,
            error_code=None,
            audio_duration_s=duration_s,
            finished_at=now,
        ):
            return False
        await self.session.execute(
            self._insert(JobResult)
            .values(job_id=job_id, transcript=transcript, created_at=now)
            .on_conflict_do_nothing()
        )
        return True

    async def fail(self, *, job_id: str, epoch: int, error: str, code: str, now: datetime) -> bool:
        return await self._leave(
            job_id,
            epoch,
            now,
            status=JobStatus.FAILED,
            error=error,
            error_code=code,
            finished_at=now,
        )

    async def retry_later(
        self, *, job_id: str, epoch: int, error: str, code: str, at: datetime, now: datetime
    ) -> bool:
        """running -> queued after a failure that used up an attempt; it shows until then."""
        return await self._leave(
            job_id,
            epoch,
            now,
            status=JobStatus.QUEUED,
            error=error,
            error_code=code,
            next_attempt_at=at,
        )

    async def interrupted(self, *, job_id: str, epoch: int, at: datetime, now: datetime) -> bool:
        """running -> queued after an interruption (overload, replica restart).

        `claim` counted an attempt when it started; an interruption is not the job's fault,
        so the attempt is given back and `interruptions` counts it instead.
        """
        return await self._leave(
            job_id,
            epoch,
            now,
            status=JobStatus.QUEUED,
            attempts=Job.attempts - 1,
            interruptions=Job.interruptions + 1,
            next_attempt_at=at,
        )
