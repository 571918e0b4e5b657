"""The tracker's side of the limits: the hook that reconciles a finished job's audio-seconds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from services.core.settings import Settings
from services.core.storage import AudioStorage
from services.jobs.tables import Job
from services.limits.limiter import UsageLimiter
from services.limits.usage import AudioMeter, JobUsageReconciler


def job_usage_reconciler(
    settings: Settings, storage: AudioStorage
) -> Callable[[Job, float], Awaitable[None]] | None:
    """None when audio-seconds are unlimited (nothing to reconcile)."""
    if settings.limits.audio_seconds_per_hour is None:
        return None
    return JobUsageReconciler(AudioMeter(UsageLimiter(settings.limits, settings.redis)), storage)
