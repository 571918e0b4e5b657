"""Retention: what the tracker deletes, in batches, until nothing is left or time runs out.

One sweep, in four phases, each looping over batches (every batch one transaction):
1. finished jobs past `expires_at` lose their result, chunks and audio; the row stays as a
   small tombstone (`audio_key` null, `result_deleted` true), so the job still reads and
   its result answers 410 `result_deleted` rather than 404;
2. tombstones `tombstone_retention_s` past their `expires_at` are deleted;
3. idempotency keys older than `idempotency_ttl_s` are deleted;
4. stored audio that no job row refers to, older than `orphan_audio_age_s`, is deleted
   (an upload whose row never committed, a crash between commit and delete, a partial);
   the store is listed in passes resumed across sweeps, a new pass at most every quarter
   of that age.

No phase has a fixed quota: a sweep stops only when a phase runs dry or its time budget
is spent, and every phase gets at least one batch per sweep, so a backlog in one cannot
starve the others. Rows are committed before files are deleted; a crash in between
leaves files no row refers to, which phase 4 removes later.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.core.clock import utcnow
from services.core.db import transaction
from services.core.logging import get_logger
from services.core.settings import JobsSettings
from services.core.storage import AudioStorage, StoredKey
from services.jobs.repository import JobRepository

log = get_logger(__name__)

BATCH_SIZE = 500
"""Rows per transaction: short locks, and IN lists every database takes."""
SCAN_BATCH_SIZE = 2000
"""Stored keys looked up per query (`jobs.audio_key` has no index: fewer, larger scans)."""


@dataclass
class SweepReport:
    forgotten: int = 0
    """Jobs whose result, chunks and audio were deleted (now tombstones)."""
    tombstones: int = 0
    """Tombstone rows deleted."""
    idempotency_keys: int = 0
    orphans: int = 0
    """Stored audio files no job referred to."""
    elapsed_s: float = 0.0
    complete: bool = True
    """False when the time budget ran out with work left (the next sweep goes on)."""


class Sweeper:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        storage: AudioStorage,
        settings: JobsSettings,
        evict: Callable[[list[str]], Awaitable[None]],
        batch_size: int = BATCH_SIZE,
        scan_batch_size: int = SCAN_BATCH_SIZE,
    ) -> None:
        self._sessions = sessions
        self._storage = storage
        self._settings = settings
        self._evict = evict
        self._batch = batch_size
        self._scan_batch = scan_batch_size
        self._scan: Iterator[StoredKey] | None = None  # a storage pass, resumed across sweeps
        self._scan_started = float("-inf")
        self._lock = asyncio.Lock()

    async def sweep(self, budget_s: float) -> SweepReport:
        async with self._lock:
            started = time.monotonic()
            report = SweepReport()
            now = utcnow()
            phases = (self._forget_expired, self._drop_tombstones, self._drop_keys)
            for phase in (*phases, self._drop_orphans):
                while await phase(now, report):  # True: a full batch, maybe more left
                    if time.monotonic() - started >= budget_s:
                        report.complete = False
                        break
            report.elapsed_s = time.monotonic() - started
            return report

    async def _forget_expired(self, now: datetime, report: SweepReport) -> bool:
        async with transaction(self._sessions) as session:
            repo = JobRepository(session)
            rows = await repo.expired(now, self._batch)
            job_ids = [job_id for job_id, _ in rows]
            await repo.forget_many(job_ids, now)
        await self._delete_audio([key for _, key in rows if key])
        await self._evict(job_ids)
        report.forgotten += len(rows)
        return len(rows) == self._batch

    async def _drop_tombstones(self, now: datetime, report: SweepReport) -> bool:
        before = now - timedelta(seconds=self._settings.tombstone_retention_s)
        async with transaction(self._sessions) as session:
            job_ids = await JobRepository(session).drop_tombstones(before, self._batch)
        await self._evict(job_ids)
        report.tombstones += len(job_ids)
        return len(job_ids) == self._batch

    async def _drop_keys(self, now: datetime, report: SweepReport) -> bool:
        before = now - timedelta(seconds=self._settings.idempotency_ttl_s)
        async with transaction(self._sessions) as session:
            dropped = await JobRepository(session).drop_idempotency_keys(before, self._batch)
        report.idempotency_keys += dropped
        return dropped == self._batch

    async def _drop_orphans(self, now: datetime, report: SweepReport) -> bool:
        if self._scan is None:
            # Listing the whole store is the costly part: a new pass at most every quarter
            # of the orphan age, so an orphan goes within 1.25 times that age.
            if time.monotonic() - self._scan_started < self._settings.orphan_audio_age_s / 4:
                return False
            self._scan_started = time.monotonic()
            self._scan = self._storage.scan()
        batch = await asyncio.to_thread(list, itertools.islice(self._scan, self._scan_batch))
        if len(batch) < self._scan_batch:
            self._scan = None  # this pass is done; the next sweep starts another
        # Modification times are wall-clock; a young file may be an upload whose row is
        # about to commit.
        cutoff = time.time() - self._settings.orphan_audio_age_s
        old = [stored.key for stored in batch if stored.modified_at < cutoff]
        if old:
            async with transaction(self._sessions) as session:
                referenced = await JobRepository(session).referenced_audio(old)
            orphans = [key for key in old if key not in referenced]
            await self._delete_audio(orphans)
            report.orphans += len(orphans)
        return self._scan is not None

    async def _delete_audio(self, keys: list[str]) -> None:
        for key in keys:
            try:
                await self._storage.delete(key)
            except OSError as exc:  # its row no longer refers to it: a later pass retries
                log.warning("audio_not_deleted", key=key, error=repr(exc))
