"""The database gauges come from one tracker, and the recording calls record what they say.

Real SQLite (migrated like production), two tracker incarnations, jobs in every state; the
recorder is the seam's in-memory backend. No Ray.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from services.core.clock import utcnow
from services.core.db import create_engine, session_factory, transaction
from services.core.disk_metrics import DiskSampler
from services.core.metrics import MemoryBackend, Telemetry, telemetry
from services.core.settings import Settings
from services.jobs.leases import LeaseRepository
from services.jobs.metrics import JobMetricsSampler
from services.jobs.tables import Job, JobStatus
from services.migrations import upgrade

LEASE_S = 10.0


def _job(index: int, status: JobStatus, age_s: float) -> Job:
    created = utcnow() - timedelta(seconds=age_s)
    return Job(
        id=f"job-{index:04d}",
        status=status.value,
        task="transcribe",
        model="tiny.en",
        options={},
        audio_sha256="0" * 64,
        audio_bytes=1,
        attempts=0,
        max_attempts=3,
        next_attempt_at=created,
        created_at=created,
        updated_at=created,
        expires_at=created + timedelta(days=7),
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path)
    upgrade(settings.database_url)
    return settings


async def test_one_tracker_exports_the_database_gauges(settings: Settings) -> None:
    engine = create_engine(settings)
    sessions = session_factory(engine)
    try:
        async with transaction(sessions) as session:
            repo = LeaseRepository(session)
            first = await repo.start_incarnation(name="a", model="tiny.en", now=utcnow())
            second = await repo.start_incarnation(name="b", model="tiny.en", now=utcnow())
            states = [JobStatus.QUEUED] * 3 + [JobStatus.RUNNING] + [JobStatus.SUCCEEDED] * 2
            session.add_all(_job(i, s, age_s=100.0 * (i + 1)) for i, s in enumerate(states))
        memory_a, memory_b = MemoryBackend(), MemoryBackend()
        a = JobMetricsSampler(
            sessions, token=lambda: first, lease_s=LEASE_S, recorder=Telemetry(memory_a)
        )
        b = JobMetricsSampler(
            sessions, token=lambda: second, lease_s=LEASE_S, recorder=Telemetry(memory_b)
        )
        assert await a.sample() is True
        assert await b.sample() is False
        assert memory_a.values("rayscribe_jobs", state="queued") == [3]
        assert memory_a.values("rayscribe_jobs", state="running") == [1]
        assert memory_a.values("rayscribe_jobs", state="succeeded") == [2]
        assert memory_a.values("rayscribe_jobs", state="failed") == [0]
        (oldest,) = memory_a.values("rayscribe_oldest_queued_job_age_seconds")
        assert 300 <= oldest < 330  # the third queued job was created 300 s ago
        assert memory_b.metrics.get("rayscribe_jobs") is None  # never the exporter: silent
        for memory in (memory_a, memory_b):
            (age,) = memory.values("rayscribe_tracker_heartbeat_age_seconds")
            assert 0 <= age < 30

        # The first tracker stops: the second takes over, the first exports zeros.
        async with transaction(sessions) as session:
            await LeaseRepository(session).stop_incarnation(token=first, now=utcnow())
        assert await a.sample() is False
        assert await b.sample() is True
        assert memory_a.values("rayscribe_jobs", state="queued")[-1] == 0
        assert memory_a.values("rayscribe_oldest_queued_job_age_seconds")[-1] == 0
        assert memory_b.values("rayscribe_jobs", state="queued") == [3]
    finally:
        await engine.dispose()


def test_the_recording_calls_record_small_label_sets(settings: Settings, tmp_path: Path) -> None:
    memory = MemoryBackend()
    recorder = Telemetry(memory)
    recorder.request("/v1/jobs/{job_id}", "tiny.en", 404)
    recorder.error_answered("invalid_audio")
    recorder.error_answered("quota_exceeded")
    recorder.error_answered("job_not_found")  # neither a decoder refusal nor a limit
    recorder.transcribed("tiny.en", "transcribe", audio_s=10.0, wall_s=2.0)
    recorder.batch("tiny.en", windows=3, fill_s=21.0, inference_s=1.5, queued_s=[0.1, 0.2])
    recorder.job_failure("internal_error", final=False)
    recorder.job_failure("truncated_audio", final=True)
    recorder.job_interrupted()
    assert memory.total("rayscribe_requests_total", route="/v1/jobs/{job_id}", status="404") == 1
    assert memory.total("rayscribe_decode_failures_total", code="invalid_audio", path="upload") == 1
    assert memory.total("rayscribe_decode_failures_total", code="truncated_audio", path="job") == 1
    assert memory.total("rayscribe_limit_rejections_total", code="quota_exceeded") == 1
    assert memory.total("rayscribe_limit_rejections_total") == 1
    assert memory.values("rayscribe_real_time_factor") == [0.2]
    assert memory.total("rayscribe_audio_seconds_total", task="transcribe") == 10
    assert memory.values("rayscribe_queue_wait_seconds") == [0.1, 0.2]
    assert memory.total("rayscribe_windows_decoded_total") == 3
    assert memory.total("rayscribe_job_retries_total", reason="error") == 1
    assert memory.total("rayscribe_job_retries_total", reason="interruption") == 1
    recorder.start_at_zero("tracker")
    assert memory.values("rayscribe_job_retries_total", reason="error") == [1, 0]
    assert memory.values("rayscribe_job_attempts_total") == [0]
    DiskSampler(settings, tmp_path, recorder)()
    (free,) = memory.values("rayscribe_disk_free_bytes", volume="audio")
    (reserve,) = memory.values("rayscribe_disk_reserve_bytes", volume="audio")
    assert 0 < reserve <= settings.jobs.disk_reserve_bytes
    assert free > 0


def test_the_process_recorder_survives_pickling() -> None:
    """Serve pickles deployment classes with the globals they use: a replica must get its
    own process's recorder back, not a copy."""
    import pickle

    assert pickle.loads(pickle.dumps(telemetry)) is telemetry
