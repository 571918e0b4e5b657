"""The batches use case: submit a bulk run as a Ray job, follow it, stop it, tail its log.

One service method is one unit of work, as in `services/jobs`: database writes happen in
one `transaction()` each; calls to Ray (blocking, in a thread) happen outside them. A batch
row is written before its Ray job is submitted under the row's own submission id, and
deleted again when the submission fails (the client gets 503 and nothing half-made is
left). The Ray job's status is the authority on the state: a read refreshes an active
batch from Ray and moves it forward only (compare-and-set), and charges the owner's quota
for the audio-seconds the driver reported since.
"""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.bulk.batches_env import job_env
from services.bulk.batches_errors import BatchNotFoundError, BulkUnavailableError, RayJobsError
from services.bulk.batches_models import BatchPage, BatchRequest, BatchView, entrypoint
from services.bulk.batches_paths import PathPolicy
from services.bulk.batches_ray import STATE_OF, RayJobs, RayJobSpec, RayJobStatus
from services.bulk.batches_repository import BatchRepository
from services.bulk.batches_tables import BATCH_ACTIVE, Batch, BatchState
from services.bulk.batches_usage import SUBMISSION_CHARGE_S, audio_meter, charge_batch
from services.bulk.speakers import diarization_missing
from services.core.clock import utcnow
from services.core.db import transaction
from services.core.errors import InvalidRequestError
from services.core.logging import get_logger
from services.core.paging import check_page
from services.core.settings import Settings
from services.limits.usage import AudioMeter

log = get_logger(__name__)

MAX_LOG_LINES = 10_000
SUBMISSION_PREFIX = "rayscribe-batch-"
MAX_ERROR_CHARS = 2000


def _check_id(batch_id: str) -> None:
    if not 1 <= len(batch_id) <= 36:
        raise BatchNotFoundError(batch_id)


class BatchesService:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        ray: RayJobs | None,
        meter: AudioMeter | None = None,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._ray = ray
        self._policy = PathPolicy(settings.bulk.allowed_roots)
        self._meter = meter if meter is not None else audio_meter(settings)

    def _cluster(self) -> RayJobs:
        if self._ray is None:
            raise BulkUnavailableError(
                "Batches are not available: this service has no Ray cluster configured "
                "(bulk.ray_address)."
            )
        return self._ray

    # -- submit -------------------------------------------------------------------------

    async def submit(self, request: BatchRequest, *, owner: str | None) -> BatchView:
        ray = self._cluster()
        if request.options.speakers and (missing := diarization_missing()) is not None:
            # The job would stop at its first line (`--speakers` refused): say so now.
            raise InvalidRequestError(
                f"options.speakers is not available here: {missing}.",
                param="options.speakers",
                code="diarization_unavailable",
            )
        self._policy.check_output(request.output)
        await asyncio.to_thread(self._policy.check_input, request.input)
        key = _limit_key(owner)
        charged = 0.0
        if self._meter is not None and self._meter.enabled:
            await self._meter.admit(key, SUBMISSION_CHARGE_S)  # 429 with nothing charged
            charged = SUBMISSION_CHARGE_S
        batch_id = str(uuid.uuid4())
        now = utcnow()
        batch = Batch(
            id=batch_id,
            owner=owner,
            state=BatchState.QUEUED,
            input=request.input,
            output=request.output,
            options=request.options.model_dump(mode="json"),
            ray_job_id=SUBMISSION_PREFIX + batch_id,
            total=None,
            done=0,
            failed=0,
            audio_seconds=0.0,
            charged_audio_s=charged,
            created_at=now,
            updated_at=now,
        )
        try:
            async with transaction(self._sessions) as session:
                await BatchRepository(session).add(batch)
        except BaseException:
            await self._refund(key, charged)
            raise
        spec = RayJobSpec(
            submission_id=batch.ray_job_id,
            entrypoint=entrypoint(self._settings.bulk.python, request, batch_id),
            env_vars=job_env(self._settings),
            metadata={"rayscribe_batch_id": batch_id},
        )
        try:
            await asyncio.to_thread(ray.submit, spec)
        except RayJobsError as exc:
            log.warning("batch_submit_failed", batch_id=batch_id, error=str(exc)[:500])
            async with transaction(self._sessions) as session:
                await BatchRepository(session).delete(batch_id)
            await self._refund(key, charged)
            raise BulkUnavailableError(
                "The Ray cluster did not accept the batch; retry shortly."
            ) from exc
        log.info("batch_submitted", batch_id=batch_id, ray_job_id=batch.ray_job_id)
        return BatchView.of(batch)

    async def _refund(self, key: str, charged: float) -> None:
        if charged and self._meter is not None:
            await self._meter.charge(key, -charged)

    # -- reads --------------------------------------------------------------------------

    async def _owned(self, batch_id: str, owner: str | None) -> Batch:
        _check_id(batch_id)
        async with transaction(self._sessions) as session:
            batch = await BatchRepository(session).get(batch_id)
        if batch is None or (owner is not None and batch.owner != owner):
            raise BatchNotFoundError(batch_id)
        return batch

    async def get(self, batch_id: str, owner: str | None) -> BatchView:
        batch = await self._owned(batch_id, owner)
        return await self._refresh(batch)

    async def page(
        self, *, owner: str | None, state: BatchState | None, limit: int, cursor: str | None
    ) -> BatchPage:
        check_page(limit, cursor)
        async with transaction(self._sessions) as session:
            rows, next_cursor = await BatchRepository(session).page(
                owner=owner, state=state, limit=limit, cursor=cursor
            )
        views = await asyncio.gather(*(self._refresh(row) for row in rows))
        return BatchPage(data=list(views), next_cursor=next_cursor)

    async def _refresh(self, batch: Batch) -> BatchView:
        """Bring an active batch's state up to its Ray job's; charge new audio-seconds."""
        if batch.state in BATCH_ACTIVE and self._ray is not None:
            try:
                info = await asyncio.to_thread(self._ray.info, batch.ray_job_id)
            except RayJobsError as exc:  # keep answering from the row while Ray is away
                log.warning("batch_refresh_failed", batch_id=batch.id, error=str(exc)[:300])
            else:
                if info is None:
                    await self._move(batch.id, BatchState.FAILED, "The Ray cluster lost this job.")
                elif info.status is not RayJobStatus.PENDING:
                    error = None
                    if info.status in (RayJobStatus.FAILED, RayJobStatus.STOPPED):
                        error = (info.message or info.status.value)[:MAX_ERROR_CHARS]
                    await self._move(batch.id, STATE_OF[info.status], error)
        await charge_batch(self._sessions, self._meter, batch.id)
        async with transaction(self._sessions) as session:
            fresh = await BatchRepository(session).get(batch.id)
        return BatchView.of(fresh or batch)

    async def _move(self, batch_id: str, state: BatchState, error: str | None = None) -> None:
        async with transaction(self._sessions) as session:
            if await BatchRepository(session).move(batch_id, state, utcnow(), error):
                log.info("batch_state", batch_id=batch_id, state=state.value)

    # -- stop and logs ------------------------------------------------------------------

    async def stop(self, batch_id: str, owner: str | None) -> BatchView:
        """Stop an active batch's Ray job; a finished batch is returned as it is."""
        batch = await self._owned(batch_id, owner)
        if batch.state in BATCH_ACTIVE:
            ray = self._cluster()
            try:
                await asyncio.to_thread(ray.stop, batch.ray_job_id)
            except RayJobsError as exc:
                raise BulkUnavailableError(
                    "The Ray cluster did not answer the stop; retry shortly."
                ) from exc
            await self._move(batch.id, BatchState.STOPPED, "Stopped at the owner's request.")
        return await self._refresh(batch)

    async def logs(self, batch_id: str, owner: str | None, tail: int) -> str:
        if not 1 <= tail <= MAX_LOG_LINES:
            raise InvalidRequestError(
                f"tail must be 1 to {MAX_LOG_LINES}, got {tail}.", param="tail"
            )
        batch = await self._owned(batch_id, owner)
        ray = self._cluster()
        try:
            text = await asyncio.to_thread(ray.logs, batch.ray_job_id)
        except RayJobsError as exc:
            raise BulkUnavailableError(
                "The Ray cluster did not return the log; retry shortly."
            ) from exc
        lines = text.splitlines(keepends=True)
        return "".join(lines[-tail:])


def _limit_key(owner: str | None) -> str:
    return owner or "anonymous"
