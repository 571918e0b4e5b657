"""Every SQL statement about batch rows. Never commits: the service owns the transaction.

State changes only move forward (queued -> running -> finished) and are compare-and-set on
the state they expect, so a stale refresh never moves a finished batch back; the counts
the Ray job's driver writes only grow.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.bulk.batches_tables import BATCH_ACTIVE, BATCH_FINISHED, Batch, BatchState
from services.core.paging import newest_first


class BatchRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, batch: Batch) -> None:
        self.session.add(batch)
        await self.session.flush()

    async def get(self, batch_id: str) -> Batch | None:
        return await self.session.get(Batch, batch_id, populate_existing=True)

    async def delete(self, batch_id: str) -> None:
        batch = await self.get(batch_id)
        if batch is not None:
            await self.session.delete(batch)

    async def page(
        self, *, owner: str | None, state: BatchState | None, limit: int, cursor: str | None
    ) -> tuple[list[Batch], str | None]:
        query = select(Batch)
        if owner is not None:
            query = query.where(Batch.owner == owner)
        if state is not None:
            query = query.where(Batch.state == state)
        return await newest_first(
            self.session, query, Batch.created_at, Batch.id, limit=limit, cursor=cursor
        )

    async def count_by_state(self) -> dict[str, int]:
        """How many batches are in each state (states with none are left out)."""
        rows = await self.session.execute(select(Batch.state, func.count()).group_by(Batch.state))
        return {str(state): int(count) for state, count in rows.all()}

    async def _update(self, condition: Any, **values: Any) -> bool:
        changed = await self.session.execute(
            update(Batch).where(condition).values(**values).returning(Batch.id)
        )
        return changed.first() is not None

    async def move(
        self, batch_id: str, state: BatchState, now: datetime, error: str | None = None
    ) -> bool:
        """Forward only: to running from queued; to a finished state from an active one."""
        if state in BATCH_FINISHED:
            return await self._update(
                and_(Batch.id == batch_id, Batch.state.in_(BATCH_ACTIVE)),
                state=state,
                finished_at=now,
                updated_at=now,
                error=error,
            )
        if state is BatchState.RUNNING:
            return await self._update(
                and_(Batch.id == batch_id, Batch.state == BatchState.QUEUED),
                state=state,
                started_at=now,
                updated_at=now,
            )
        return False

    async def record_counts(
        self,
        batch_id: str,
        *,
        total: int,
        done: int,
        failed: int,
        audio_seconds: float,
        now: datetime,
    ) -> bool:
        """The driver's counts; an older (smaller) report never replaces a newer one."""
        return await self._update(
            and_(Batch.id == batch_id, Batch.done + Batch.failed <= done + failed),
            total=total,
            done=done,
            failed=failed,
            audio_seconds=audio_seconds,
            updated_at=now,
        )

    async def take_charge(self, batch_id: str, charged: float, to: float) -> bool:
        """Move `charged_audio_s` from `charged` to `to`; False if another process did."""
        return await self._update(
            and_(Batch.id == batch_id, Batch.charged_audio_s == charged),
            charged_audio_s=to,
        )
