"""Every SQL statement about jobs. Services never commit: the caller owns the transaction.

State changes are compare-and-set: an UPDATE names the state it expects (and, for the
tracker, the lease token that holds the job), so a late or stale writer changes nothing.
Claiming uses `FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises writers anyway.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from services.jobs.failures import ATTEMPTS_EXHAUSTED, LOST_EVERY_ATTEMPT, MODEL_NOT_SERVED
from services.jobs.tables import (
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

    async def lock(self, job_id: str) -> Job | None:
        """The job, locked until the transaction ends (PostgreSQL; SQLite has one writer)."""
        return await self.session.scalar(
            select(Job)
            .where(Job.id == job_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )

    async def get_many(self, job_ids: list[str]) -> list[Job]:
        rows = await self.session.scalars(
            select(Job).where(Job.id.in_(job_ids)).execution_options(populate_existing=True)
        )
        return list(rows)

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

    async def expired(self, now: datetime, limit: int) -> list[tuple[str, str | None]]:
        """Finished jobs past their retention that still hold data, as (id, audio key),
        locked for this transaction (other sweepers skip them on PostgreSQL)."""
        query = (
            select(Job.id, Job.audio_key)
            .where(
                Job.expires_at < now,
                Job.status.in_(FINISHED),
                or_(Job.audio_key.is_not(None), Job.result_deleted.is_(False)),
            )
            .order_by(Job.expires_at)
            .limit(limit)
        )
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        return [(row.id, row.audio_key) for row in await self.session.execute(query)]

    # -- retention: the sweeper's batches -----------------------------------------------

    async def forget_many(self, job_ids: list[str], now: datetime) -> None:
        """Turn finished jobs into tombstones: no result, chunks or audio; the row stays."""
        if not job_ids:
            return
        await self.session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status.in_(FINISHED))
            .values(version=Job.version + 1, audio_key=None, result_deleted=True, updated_at=now)
        )
        await self.session.execute(delete(JobResult).where(JobResult.job_id.in_(job_ids)))
        await self.session.execute(delete(JobChunk).where(JobChunk.job_id.in_(job_ids)))

    async def drop_tombstones(self, expired_before: datetime, limit: int) -> list[str]:
        """Delete tombstones whose retention ended before `expired_before`; their ids."""
        query = (
            select(Job.id)
            .where(
                Job.expires_at < expired_before,
                Job.status.in_(FINISHED),
                Job.result_deleted.is_(True),
                Job.audio_key.is_(None),
            )
            .limit(limit)
        )
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        job_ids = list(await self.session.scalars(query))
        if job_ids:
            # A key left pointing at a vanished job would hand its next use a job id that
            # no longer exists; results and chunks are gone already (SQLite has no cascade).
            await self.session.execute(
                delete(IdempotencyKey).where(IdempotencyKey.job_id.in_(job_ids))
            )
            await self.session.execute(delete(JobResult).where(JobResult.job_id.in_(job_ids)))
            await self.session.execute(delete(JobChunk).where(JobChunk.job_id.in_(job_ids)))
            await self.session.execute(delete(Job).where(Job.id.in_(job_ids)))
        return job_ids

    async def drop_idempotency_keys(self, created_before: datetime, limit: int) -> int:
        """Delete up to `limit` idempotency keys older than their TTL; how many."""
        query = (
            select(IdempotencyKey.scope, IdempotencyKey.key)
            .where(IdempotencyKey.created_at < created_before)
            .limit(limit)
        )
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        keys = [(row.scope, row.key) for row in await self.session.execute(query)]
        if keys:
            await self.session.execute(
                delete(IdempotencyKey).where(
                    tuple_(IdempotencyKey.scope, IdempotencyKey.key).in_(keys),
                    IdempotencyKey.created_at < created_before,
                )
            )
        return len(keys)

    async def referenced_audio(self, keys: list[str]) -> set[str]:
        """The storage keys among `keys` that some job row still refers to."""
        if not keys:
            return set()
        rows = await self.session.scalars(select(Job.audio_key).where(Job.audio_key.in_(keys)))
        return {key for key in rows if key is not None}

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


def encode_cursor(job: Job) -> str:
    raw = f"{_naive_utc(job.created_at).isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError for anything that is not a cursor this API handed out.

    Rows hold naive UTC; a cursor whose timestamp carries an offset (made elsewhere, or by
    a client) is converted to that, so it compares correctly on PostgreSQL and SQLite.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, job_id = base64.urlsafe_b64decode(padded.encode()).decode().split("|", 1)
        moment = _naive_utc(datetime.fromisoformat(created_at))
    except (ValueError, UnicodeError, OverflowError, TypeError) as exc:
        raise ValueError(f"not a cursor: {cursor[:40]!r}") from exc
    if not job_id or len(job_id) > 36:
        raise ValueError(f"not a cursor: {cursor[:40]!r}")
    return moment, job_id


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)
