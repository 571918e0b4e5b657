"""Audio-seconds: what a request or a job is charged, and the job's reconciliation.

Sync requests are charged their decoded length before inference. A job is charged at
submission what its header declares (at least `MIN_JOB_CHARGE_S`, so a file that declares
nothing still needs room in the bucket); when the tracker has decoded it, the difference to
its real length is charged on top (forced: the work is done, so it becomes debt that delays
the user's next requests). Both sides compute the submission charge with
`submission_charge_s` from the stored file's header, so no extra column is needed.
"""

from __future__ import annotations

import asyncio
from typing import BinaryIO

from services.auth.principal import Principal
from services.core.logging import get_logger
from services.core.storage import AudioStorage
from services.jobs.tables import Job
from services.limits.errors import RateLimitExceededError
from services.limits.limiter import Kind, UsageLimiter
from services.transcription.audio import probe_audio

log = get_logger(__name__)

MIN_JOB_CHARGE_S = 1.0
RECONCILE_TOLERANCE_S = 0.5
"""Headers round durations; a difference below this is not worth a Redis call."""


def submission_charge_s(declared_s: float | None) -> float:
    return max(declared_s or 0.0, MIN_JOB_CHARGE_S)


def declared_charge_s(upload: BinaryIO) -> float:
    """What a job's audio is charged at submission (blocking: run it in a thread)."""
    try:
        info = probe_audio(upload)
    finally:
        upload.seek(0)
    return submission_charge_s(info.declared_duration_s)


class AudioMeter:
    def __init__(self, limiter: UsageLimiter) -> None:
        self._limiter = limiter

    @property
    def enabled(self) -> bool:
        return self._limiter.quota(Kind.AUDIO_SECONDS) is not None

    async def admit(self, key: str, seconds: float) -> None:
        """Charge `seconds`, or raise 429 (charging nothing) when the bucket lacks room."""
        decision = await self._limiter.take(Kind.AUDIO_SECONDS, key, seconds)
        if decision is not None and not decision.allowed:
            raise RateLimitExceededError(
                f"This request needs {seconds:.1f} s of audio and your audio-seconds quota "
                f"({decision.limit:g} s per period) has too little left; retry later.",
                decision,
            )

    async def charge(self, key: str, seconds: float) -> None:
        """Charge unconditionally (a negative amount refunds)."""
        if seconds:
            await self._limiter.take(Kind.AUDIO_SECONDS, key, seconds, force=True)


class JobUsageReconciler:
    """The tracker's hook: charge a finished job's real length beyond what it was charged."""

    def __init__(self, meter: AudioMeter, storage: AudioStorage) -> None:
        self._meter = meter
        self._storage = storage

    async def __call__(self, job: Job, decoded_s: float) -> None:
        if not self._meter.enabled or job.audio_key is None:
            return
        try:
            charged = await asyncio.to_thread(self._charged_s, job.audio_key)
        except Exception as exc:  # the audio is unreadable now: charge its real length
            log.warning("usage_reconcile_probe_failed", job_id=job.id, error=repr(exc))
            charged = 0.0
        extra = decoded_s - charged
        if extra > RECONCILE_TOLERANCE_S:
            key = Principal(owner=job.owner).limit_key
            await self._meter.charge(key, extra)
            log.info("usage_reconciled", job_id=job.id, charged_s=charged, extra_s=round(extra, 1))

    def _charged_s(self, key: str) -> float:
        with self._storage.open(key) as file:
            return declared_charge_s(file)
