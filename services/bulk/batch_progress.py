"""`DatabaseProgress`: the bulk job's driver writes its counts to the batch's row.

`cluster.bulk --batch-id ID` builds one from the settings its runtime_env carries. The sink
is called synchronously from the driver (which may or may not run an event loop of its own),
so it keeps a private event loop on a daemon thread and runs its database work there.
`advanced` writes at most every `bulk.progress_interval_s`; `started` and `finished` always
write. A failed write is logged and skipped: progress reporting never stops the run.
Each write also charges the owner's audio-seconds quota for what was processed since
(`batches_usage.charge_batch`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

from services.bulk.batches_repository import BatchRepository
from services.bulk.batches_tables import BatchState
from services.bulk.batches_usage import audio_meter, charge_batch
from services.bulk.progress import BulkCounts
from services.core.clock import utcnow
from services.core.db import create_engine, session_factory, transaction
from services.core.logging import get_logger
from services.core.settings import Settings

log = get_logger(__name__)

WRITE_TIMEOUT_S = 30.0
MAX_ERROR_CHARS = 2000


class DatabaseProgress:
    def __init__(self, settings: Settings, batch_id: str) -> None:
        self.batch_id = batch_id
        self._interval_s = settings.bulk.progress_interval_s
        self._last_write = float("-inf")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="batch-progress", daemon=True
        )
        self._thread.start()
        self._engine = create_engine(settings)
        self._sessions = session_factory(self._engine)
        # Without Redis a quota is counted per process: a charge in this short-lived driver
        # would count nowhere that matters, so the service charges on its next refresh.
        self._meter = audio_meter(settings) if settings.redis.url is not None else None
        self.writes = 0
        """Rows written so far (tests read it to see the throttle work)."""

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        future: Future[None] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            future.result(timeout=WRITE_TIMEOUT_S)
        except Exception as exc:
            log.warning("batch_progress_write_failed", batch_id=self.batch_id, error=repr(exc))

    async def _write(self, counts: BulkCounts, state: BatchState | None, error: str | None) -> None:
        now = utcnow()
        async with transaction(self._sessions) as session:
            repo = BatchRepository(session)
            await repo.record_counts(
                self.batch_id,
                total=counts.total,
                done=counts.done,
                failed=counts.failed,
                audio_seconds=counts.audio_seconds,
                now=now,
            )
            if state is not None:
                await repo.move(self.batch_id, state, now, error)
        self.writes += 1
        await charge_batch(self._sessions, self._meter, self.batch_id)

    def _write_now(
        self, counts: BulkCounts, state: BatchState | None = None, error: str | None = None
    ) -> None:
        self._last_write = time.monotonic()
        self._run(self._write(counts, state, error))

    def started(self, counts: BulkCounts) -> None:
        self._write_now(counts, BatchState.RUNNING)

    def advanced(self, counts: BulkCounts) -> None:
        if time.monotonic() - self._last_write >= self._interval_s:
            self._write_now(counts)

    def finished(self, counts: BulkCounts, error: str | None) -> None:
        state = BatchState.SUCCEEDED if error is None else BatchState.FAILED
        self._write_now(counts, state, None if error is None else error[:MAX_ERROR_CHARS])
        self.close()

    def close(self) -> None:
        """Give the connections back and end the loop's thread (idempotent)."""
        if self._loop.is_closed():
            return
        self._run(self._engine.dispose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=WRITE_TIMEOUT_S)
        self._loop.close()
