"""Concurrent jobs and stored bytes per owner: facts in the database, checked in the
transaction that inserts the job, so they cannot drift the way a counter in Redis could.

On PostgreSQL the check first takes a transaction-scoped advisory lock on the owner, so two
submissions of one owner are serialised between the count and the insert (other owners are
not held up). SQLite serialises writers itself.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import ColumnElement, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.core.clock import utcnow
from services.core.settings import LimitsSettings
from services.jobs.tables import ACTIVE, Job
from services.limits.errors import QuotaExceededError

CONCURRENCY_RETRY_S = 5.0
"""The Retry-After hint when the concurrency quota is full (the end of a job is unknown)."""


def _lock_id(owner: str | None) -> int:
    digest = hashlib.sha256(f"rayscribe-quota|{owner}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _owned_by(owner: str | None) -> ColumnElement[bool]:
    return Job.owner.is_(None) if owner is None else Job.owner == owner


class JobQuota:
    """Called inside the submission transaction, just before the new row is added."""

    def __init__(self, settings: LimitsSettings) -> None:
        self._max_jobs = settings.max_concurrent_jobs
        self._max_bytes = settings.max_stored_bytes

    @property
    def enabled(self) -> bool:
        return self._max_jobs is not None or self._max_bytes is not None

    async def __call__(self, session: AsyncSession, owner: str | None, new_bytes: int) -> None:
        if not self.enabled:
            return
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(
                text("SELECT pg_advisory_xact_lock(:id)"), {"id": _lock_id(owner)}
            )
        owned = _owned_by(owner)
        if self._max_jobs is not None:
            counted = select(func.count()).select_from(Job).where(owned, Job.status.in_(ACTIVE))
            active: int = (await session.execute(counted)).scalar_one()
            if active >= self._max_jobs:
                raise QuotaExceededError(
                    f"You have {active} queued or running jobs, the most allowed at once; "
                    "submit more when one has finished.",
                    retry_after_s=CONCURRENCY_RETRY_S,
                    limit=self._max_jobs,
                )
        if self._max_bytes is not None:
            row = (
                await session.execute(
                    select(
                        func.coalesce(func.sum(Job.audio_bytes), 0), func.min(Job.expires_at)
                    ).where(owned, Job.audio_key.is_not(None))
                )
            ).one()
            stored, first_expiry = int(row[0]), row[1]
            if stored + new_bytes > self._max_bytes:
                raise QuotaExceededError(
                    f"Storing {new_bytes} more bytes would exceed your {self._max_bytes}-byte "
                    f"quota ({stored} stored); delete finished jobs or wait for them to expire.",
                    retry_after_s=_seconds_until(first_expiry),
                    limit=self._max_bytes,
                )


def _seconds_until(moment: datetime | None) -> float:
    if moment is None:
        return CONCURRENCY_RETRY_S
    now = utcnow()
    if moment.tzinfo is None:
        now = now.replace(tzinfo=None)
    return max(1.0, (moment - now).total_seconds())
