"""Audio-seconds of batches count against the owner's quota, like jobs.

A batch is admitted when the owner's audio-seconds bucket has room for `MIN_JOB_CHARGE_S`
(that much is charged at submission). As the driver reports audio-seconds, whoever sees
them grow (the driver itself through `DatabaseProgress`, or the service when it refreshes a
batch) charges the difference: first the row's `charged_audio_s` moves by compare-and-set
(so two processes never charge the same seconds twice), then the charge is forced, since
the work is done (it becomes debt that delays the owner's next requests).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.auth.principal import Principal
from services.bulk.batches_repository import BatchRepository
from services.core.db import transaction
from services.core.logging import get_logger
from services.core.settings import Settings
from services.limits.limiter import UsageLimiter
from services.limits.usage import MIN_JOB_CHARGE_S, RECONCILE_TOLERANCE_S, AudioMeter

log = get_logger(__name__)

SUBMISSION_CHARGE_S = MIN_JOB_CHARGE_S


def audio_meter(settings: Settings) -> AudioMeter | None:
    """None when audio-seconds are unlimited (nothing to charge)."""
    if settings.limits.audio_seconds_per_hour is None:
        return None
    return AudioMeter(UsageLimiter(settings.limits, settings.redis))


async def charge_batch(
    sessions: async_sessionmaker[AsyncSession], meter: AudioMeter | None, batch_id: str
) -> float:
    """Charge what the batch processed beyond what was charged; returns the seconds charged."""
    if meter is None:
        return 0.0
    async with transaction(sessions) as session:
        repo = BatchRepository(session)
        batch = await repo.get(batch_id)
        if batch is None:
            return 0.0
        charged = batch.charged_audio_s or 0.0
        extra = (batch.audio_seconds or 0.0) - charged
        if extra <= RECONCILE_TOLERANCE_S:
            return 0.0
        if not await repo.take_charge(batch_id, charged, charged + extra):
            return 0.0  # another process charged these seconds
        owner = batch.owner
    await meter.charge(Principal(owner=owner).limit_key, extra)
    log.info("batch_usage_charged", batch_id=batch_id, extra_s=round(extra, 1))
    return extra
