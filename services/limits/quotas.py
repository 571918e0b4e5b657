"""Concurrent jobs and stored bytes per owner: facts in the database, checked in the
transaction that inserts the job, so they cannot drift the way a counter in Redis could.

On PostgreSQL the check first takes a transaction-scoped advisory lock on the owner, so two
submissions of one owner are serialised between the count and the insert (other owners are
not held up). SQLite serialises writers itself.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.core.clock import utcnow
from services.core.settings import LimitsSettings
from services.limits.errors import QuotaExceededError
from services.limits.repository import QuotaRepository

CONCURRENCY_RETRY_S = 5.0
"""The Retry-After hint when the concurrency quota is full (the end of a job is unknown)."""


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
        repo = QuotaRepository(session)
        await repo.hold_owner(owner)
        if self._max_jobs is not None:
            active = await repo.active_jobs(owner)
            if active >= self._max_jobs:
                raise QuotaExceededError(
                    f"You have {active} queued or running jobs, the most allowed at once; "
                    "submit more when one has finished.",
                    retry_after_s=CONCURRENCY_RETRY_S,
                    limit=self._max_jobs,
                )
        if self._max_bytes is not None:
            stored, first_expiry = await repo.stored_audio(owner)
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
