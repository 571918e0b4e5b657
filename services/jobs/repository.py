"""Every SQL statement about jobs. Services never commit: the caller owns the transaction.

State changes are compare-and-set: an UPDATE names the state it expects (and, for the
tracker, the epoch that holds the lease), so a late or stale writer changes nothing.
Claiming uses `FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises writers anyway.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from services.jobs.models import (
    ACTIVE,
    FINISHED,
    IdempotencyKey,
    Job,
    JobChunk,
    JobResult,
    JobStatus,
    TrackerIncarnation,
)


class JobRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._postgres = session.get_bind().dialect.name == "postgresql"

    def _insert(self, table: type[Any]) -> Any:
        return (postgresql.insert if self._postgres else sqlite.insert)(table)

    # -- submission ---------------------------------------------------------------------

    async def add(self, job: Job) -> None:
        self.session.add(job)
        await self.session.flush()

    async def claim_key(
        self, *, scope: str, key: str, job_id: str, request_hash: str, now: datetime, ttl_s: float
    ) -> IdempotencyKey | None:
        """Take `key` for `job_id`; return the row that already holds it, if still fresh."""
        inserted = await self.session.execute(
            self._insert(IdempotencyKey)
            .values(scope=scope, key=key, job_id=job_id, request_hash=request_hash, created_at=now)
            .on_conflict_do_nothing()
            .returning(IdempotencyKey.key)
        )
        if inserted.first() is not None:
            return None
        existing = await self.session.scalar(
            select(IdempotencyKey)
            .where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
            .with_for_update()
        )
        assert existing is not None
        if existing.created_at < now - timedelta(seconds=ttl_s):
            existing.job_id, existing.request_hash, existing.created_at = job_id, request_hash, now
            return None
        return existing

    # -- reads --------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        return await self.session.get(Job, job_id, populate_existing=True)

    async def result(self, job_id: str) -> dict[str, Any] | None:
        row = await self.session.get(JobResult, job_id)
        return row.transcript if row else None

    async def page(
        self, *, owner: str | None, status: JobStatus | None, limit: int, cursor: str | None
    ) -> tuple[list[Job], str | None]:
        """Jobs newest first; the cursor is the last row's (created_at, id)."""
        query = select(Job)
        if owner is not None:
            query = query.where(Job.owner == owner)
        if status is not None:
            query = query.where(Job.status == status)
        if cursor is not None:
            created_at, job_id = decode_cursor(cursor)
            query = query.where(
                or_(
                    Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id)
                )
            )
        rows = list(
            await self.session.scalars(
                query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
            )
        )
        next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
        return rows[:limit], next_cursor

    async def chunks(self, job_id: str) -> dict[int, dict[str, Any]]:
        rows = await self.session.scalars(select(JobChunk).where(JobChunk.job_id == job_id))
        return {row.index: row.transcript for row in rows}

    # -- cut points of long audio -------------------------------------------------------

    async def cut_points(self, job_id: str) -> list[float]:
        """The chunk boundaries recorded so far (see `JobRunner`): empty for a fresh job."""
        stored = await self.session.scalar(select(Job.cut_points).where(Job.id == job_id))
        return [float(value) for value in stored or []]

    async def record_cut_points(self, *, job_id: str, epoch: int, cut_points: list[float]) -> bool:
        """Store the boundaries decided so far; False if the job is no longer this runner's."""
        changed = await self.session.execute(
            update(Job)
            .where(self._held(job_id, epoch))
            .values(version=Job.version + 1, cut_points=cut_points)
            .returning(Job.id)
        )
        return changed.first() is not None

    # -- user-driven changes ------------------------------------------------------------

    async def cancel(self, job_id: str, now: datetime) -> bool:
        """queued|running -> cancelled. A late result can no longer be written."""
        return await self._compare_and_set(
            and_(Job.id == job_id, Job.status.in_(ACTIVE)),
            status=JobStatus.CANCELLED,
            finished_at=now,
            updated_at=now,
            lease_epoch=None,
            lease_expires_at=None,
        )

    async def forget_data(self, job_id: str, now: datetime) -> str | None:
        """Delete a finished job's result and chunks; returns its audio key to delete."""
        job = await self.session.scalar(
            select(Job).where(Job.id == job_id, Job.status.in_(FINISHED)).with_for_update()
        )
        if job is None:
            return None
        key, job.audio_key, job.result_deleted, job.updated_at = job.audio_key, None, True, now
        job.version = (job.version or 0) + 1
        await self.session.execute(delete(JobResult).where(JobResult.job_id == job_id))
        await self.session.execute(delete(JobChunk).where(JobChunk.job_id == job_id))
        return key

    async def expired(self, now: datetime, limit: int = 100) -> list[str]:
        """Finished jobs past their retention that still hold data."""
        rows = await self.session.scalars(
            select(Job.id)
            .where(
                Job.expires_at < now,
                Job.status.in_(FINISHED),
                or_(Job.audio_key.is_not(None), Job.result_deleted.is_(False)),
            )
            .limit(limit)
        )
        return list(rows)

    # -- the tracker --------------------------------------------------------------------

    async def start_incarnation(self, *, name: str, model: str, now: datetime) -> int:
        """Record a tracker (re)start; its token is a lease token no other tracker holds."""
        token = await self.session.scalar(
            self._insert(TrackerIncarnation)
            .values(name=name, model=model, started_at=now, heartbeat_at=now)
            .returning(TrackerIncarnation.token)
        )
        assert token is not None
        return int(token)

    async def requeue_lost(self, *, model: str, epoch: int, now: datetime) -> int:
        """Take over leases of other incarnations and expired ones: requeue their jobs.

        A job that already used all its attempts fails instead of looping forever.
        """
        lost = and_(
            Job.status == JobStatus.RUNNING,
            Job.model == model,
            or_(Job.lease_epoch.is_(None), Job.lease_epoch != epoch, Job.lease_expires_at < now),
        )
        await self.session.execute(
            update(Job)
            .where(lost, Job.attempts >= Job.max_attempts)
            .values(
                version=Job.version + 1,
                status=JobStatus.FAILED,
                error="the job was interrupted on every attempt",
                finished_at=now,
                updated_at=now,
                lease_epoch=None,
                lease_expires_at=None,
            )
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
        return len(requeued.all())

    async def claim(
        self, *, model: str, epoch: int, limit: int, now: datetime, lease_s: float
    ) -> list[Job]:
        """Atomically move up to `limit` due jobs from queued to running under `epoch`."""
        due = (
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED, Job.model == model, Job.next_attempt_at <= now)
            .order_by(Job.created_at)
            .limit(limit)
        )
        if self._postgres:
            due = due.with_for_update(skip_locked=True)
        claimed = await self.session.scalars(
            update(Job)
            .where(Job.id.in_(due.scalar_subquery()), Job.status == JobStatus.QUEUED)
            .values(
                version=Job.version + 1,
                status=JobStatus.RUNNING,
                attempts=Job.attempts + 1,
                lease_epoch=epoch,
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

    async def save_chunk(self, job_id: str, index: int, transcript: dict[str, Any]) -> None:
        await self.session.execute(
            self._insert(JobChunk)
            .values(job_id=job_id, index=index, transcript=transcript)
            .on_conflict_do_nothing()
        )

    async def _compare_and_set(self, condition: Any, **values: Any) -> bool:
        """One UPDATE guarded by `condition`; True if it changed the row."""
        changed = await self.session.execute(
            update(Job).where(condition).values(version=Job.version + 1, **values).returning(Job.id)
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

    async def fail(self, *, job_id: str, epoch: int, error: str, now: datetime) -> bool:
        return await self._leave(
            job_id, epoch, now, status=JobStatus.FAILED, error=error, finished_at=now
        )

    async def retry_later(
        self, *, job_id: str, epoch: int, error: str, at: datetime, now: datetime
    ) -> bool:
        return await self._leave(
            job_id, epoch, now, status=JobStatus.QUEUED, error=error, next_attempt_at=at
        )


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError for anything that is not a cursor this API handed out."""
    padded = cursor + "=" * (-len(cursor) % 4)
    created_at, job_id = base64.urlsafe_b64decode(padded.encode()).decode().split("|", 1)
    return datetime.fromisoformat(created_at), job_id
