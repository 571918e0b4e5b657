"""The SQL behind the per-owner job quotas (services/limits/quotas.py): counts over job rows.

Never commits: it runs in the submission transaction, which owns the unit of work.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import ColumnElement, func, select, text

from services.jobs.repository import Repository
from services.jobs.tables import ACTIVE, Job


def _lock_id(owner: str | None) -> int:
    digest = hashlib.sha256(f"rayscribe-quota|{owner}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _owned_by(owner: str | None) -> ColumnElement[bool]:
    return Job.owner.is_(None) if owner is None else Job.owner == owner


class QuotaRepository(Repository):
    async def hold_owner(self, owner: str | None) -> None:
        """On PostgreSQL, a transaction-scoped advisory lock on the owner: two submissions of
        one owner are serialised between the count and the insert. SQLite serialises
        writers itself, so there this does nothing."""
        if self._postgres:
            await self.session.execute(
                text("SELECT pg_advisory_xact_lock(:id)"), {"id": _lock_id(owner)}
            )

    async def active_jobs(self, owner: str | None) -> int:
        """The owner's queued and running jobs."""
        counted = (
            select(func.count()).select_from(Job).where(_owned_by(owner), Job.status.in_(ACTIVE))
        )
        active: int = (await self.session.execute(counted)).scalar_one()
        return active

    async def stored_audio(self, owner: str | None) -> tuple[int, datetime | None]:
        """The bytes of the owner's stored audio, and when the first of it expires."""
        row = (
            await self.session.execute(
                select(func.coalesce(func.sum(Job.audio_bytes), 0), func.min(Job.expires_at)).where(
                    _owned_by(owner), Job.audio_key.is_not(None)
                )
            )
        ).one()
        return int(row[0]), row[1]
