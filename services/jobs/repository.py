"""Every SQL statement about job rows: submission, reads, user changes and retention.

Repositories never commit, roll back or begin: they run statements in the session they are
given, and the service method that opened it (`services.core.db.transaction`) owns the unit
of work (see `services/jobs/service.py`). The tracker's statements (incarnations, leases,
and what a running job writes under its lease) are in `leases.py`.

State changes are compare-and-set: an UPDATE names the state it expects (and, for the
tracker, the lease token that holds the job), so a late or stale writer changes nothing.
Claiming uses `FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises writers anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from services.core.paging import newest_first
from services.jobs.tables import (
    ACTIVE,
    FINISHED,
    IdempotencyKey,
    Job,
    JobChunk,
    JobResult,
    JobSpeakerReference,
    JobSpeakers,
    JobStatus,
)


class Repository:
    """What every jobs repository shares: the session, dialect-aware inserts, row reads and
    the compare-and-set UPDATE."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._postgres = session.get_bind().dialect.name == "postgresql"

    def _insert(self, table: type[Any]) -> Any:
        return (postgresql.insert if self._postgres else sqlite.insert)(table)

    async def get(self, job_id: str) -> Job | None:
        return await self.session.get(Job, job_id, populate_existing=True)

    async def get_many(self, job_ids: list[str]) -> list[Job]:
        rows = await self.session.scalars(
            select(Job).where(Job.id.in_(job_ids)).execution_options(populate_existing=True)
        )
        return list(rows)

    async def speaker_turns(self, job_id: str) -> list[dict[str, Any]] | None:
        """The job's stored speaker turns (`diarized_json` jobs), None if none were stored."""
        row = await self.session.get(JobSpeakers, job_id)
        return row.turns if row else None

    async def speaker_references(self, job_id: str) -> list[tuple[str, bytes]]:
        """The job's known speakers as (name, 16 kHz 16-bit PCM), in the order given."""
        rows = await self.session.scalars(
            select(JobSpeakerReference)
            .where(JobSpeakerReference.job_id == job_id)
            .order_by(JobSpeakerReference.position)
        )
        return [(row.name, row.pcm) for row in rows]

    async def _compare_and_set(self, condition: Any, **values: Any) -> bool:
        """One UPDATE guarded by `condition`; True if it changed the row."""
        changed = await self.session.execute(
            update(Job).where(condition).values(version=Job.version + 1, **values).returning(Job.id)
        )
        return changed.first() is not None


class JobRepository(Repository):
    # -- submission ---------------------------------------------------------------------

    async def add(self, job: Job, references: Sequence[tuple[str, bytes]] = ()) -> None:
        """The job and its known speakers' references (name, PCM), in one flush."""
        self.session.add(job)
        await self.session.flush()
        self.session.add_all(
            JobSpeakerReference(job_id=job.id, position=i, name=name, pcm=pcm)
            for i, (name, pcm) in enumerate(references)
        )
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
        return await newest_first(
            self.session, query, Job.created_at, Job.id, limit=limit, cursor=cursor
        )

    async def lock(self, job_id: str) -> Job | None:
        """The job, locked until the transaction ends (PostgreSQL; SQLite has one writer)."""
        return await self.session.scalar(
            select(Job)
            .where(Job.id == job_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )

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
        await self.session.execute(delete(JobSpeakers).where(JobSpeakers.job_id == job_id))
        await self.session.execute(
            delete(JobSpeakerReference).where(JobSpeakerReference.job_id == job_id)
        )
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
        await self.session.execute(delete(JobSpeakers).where(JobSpeakers.job_id.in_(job_ids)))
        await self.session.execute(
            delete(JobSpeakerReference).where(JobSpeakerReference.job_id.in_(job_ids))
        )

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
            await self.session.execute(delete(JobSpeakers).where(JobSpeakers.job_id.in_(job_ids)))
            await self.session.execute(
                delete(JobSpeakerReference).where(JobSpeakerReference.job_id.in_(job_ids))
            )
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
