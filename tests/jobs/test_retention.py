"""Retention: one sweep deletes every expired job's data, keeps a tombstone that answers 410,
drops old tombstones, stale idempotency keys and orphaned audio; the tracker runs it.

Every test runs on PostgreSQL + Redis and on SQLite.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from services.core.clock import utcnow
from services.jobs.tables import IdempotencyKey, Job, JobChunk, JobResult, JobStatus
from services.transcription.request import TranscriptionRequest
from tests.conftest import DISTINCT, report
from tests.jobs.conftest import JobsEnv

Factory = Callable[..., Any]
TRANSCRIPT = {"text": "hello", "language": "en", "language_probability": 1.0,
              "duration_s": 1.0, "segments": []}  # fmt: skip


def _place_audio(env: JobsEnv, key: str, *, age_s: float = 0.0, partial: bool = False) -> Path:
    """A stored file as LocalAudioStorage lays them out (`<root>/<key[:2]>/<key>`)."""
    name = f".{key}.part" if partial else key
    path = env.app_runtime.storage.root / key[:2] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"audio")
    if age_s:
        os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


async def _add_jobs(
    env: JobsEnv,
    count: int,
    *,
    expires_at: datetime,
    status: JobStatus = JobStatus.SUCCEEDED,
    with_data: bool = True,
) -> list[str]:
    """Finished jobs with a result, a chunk and stored audio (or already tombstones)."""
    now = utcnow()
    ids = [str(uuid.uuid4()) for _ in range(count)]
    async with env.app_runtime.sessions() as session, session.begin():
        for job_id in ids:
            key = uuid.uuid4().hex if with_data else None
            session.add(
                Job(
                    id=job_id, owner=None, status=status, task="transcribe", model="tiny.en",
                    options=TranscriptionRequest(model="tiny.en").model_dump(mode="json"),
                    audio_key=key, audio_sha256="0" * 64, audio_bytes=5, attempts=1,
                    max_attempts=3, progress_done=1, next_attempt_at=now, created_at=now,
                    updated_at=now, finished_at=now, expires_at=expires_at,
                    result_deleted=not with_data, interruptions=0, version=1,
                )
            )  # fmt: skip
            if key is not None:
                _place_audio(env, key)
        await session.flush()
        if with_data:
            for job_id in ids:
                session.add(JobResult(job_id=job_id, transcript=TRANSCRIPT, created_at=now))
                session.add(JobChunk(job_id=job_id, index=0, transcript=TRANSCRIPT))
    return ids


async def _count(env: JobsEnv, sql: str) -> int:
    return int((await env.sql(sql))[0][0])


def _stored(env: JobsEnv) -> set[str]:
    return {item.key for item in env.app_runtime.storage.scan()}


async def test_one_sweep_clears_a_thousand_expired_jobs_and_keeps_tombstones(
    env_factory: Factory,
) -> None:
    env: JobsEnv = await env_factory(start=False)
    expired = await _add_jobs(env, 1000, expires_at=utcnow() - timedelta(minutes=1))
    kept = await _add_jobs(env, 5, expires_at=utcnow() + timedelta(days=1))
    assert len(_stored(env)) == 1005
    started = time.perf_counter()
    forgotten = await env.app_runtime.jobs.purge_expired()  # what the tracker calls
    elapsed_s = time.perf_counter() - started
    report(
        f"retention sweep [{env.backend}]: {forgotten} expired jobs cleared by one "
        f"purge_expired() call in {elapsed_s:.2f} s ({forgotten / elapsed_s:.0f} jobs/s)"
    )
    assert forgotten == 1000
    assert await _count(env, "SELECT count(*) FROM job_results") == 5
    assert await _count(env, "SELECT count(*) FROM job_chunks") == 5
    assert await _count(env, "SELECT count(*) FROM jobs WHERE audio_key IS NULL") == 1000
    assert len(_stored(env)) == 5
    # A tombstone still reads, and its result is gone (410), not unknown (404).
    job = await env.client.get(f"/v1/jobs/{expired[0]}")
    assert job.status_code == 200
    assert job.json()["status"] == "succeeded"
    gone = await env.client.get(f"/v1/jobs/{expired[0]}/result")
    assert gone.status_code == 410
    assert gone.json()["error"]["code"] == "result_deleted"
    assert (await env.client.get(f"/v1/jobs/{kept[0]}/result")).status_code == 200
    again = await env.app_runtime.jobs.sweep()
    assert (again.forgotten, again.tombstones) == (0, 0)


async def test_a_sweep_is_bounded_by_time_and_the_next_one_goes_on(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False)
    await _add_jobs(env, 600, expires_at=utcnow() - timedelta(minutes=1))
    first = await env.app_runtime.jobs.sweep(budget_s=0.0)  # one batch per phase
    assert (first.forgotten, first.complete) == (500, False)
    second = await env.app_runtime.jobs.sweep(budget_s=0.0)
    assert (second.forgotten, second.complete) == (100, True)
    assert await _count(env, "SELECT count(*) FROM job_results") == 0


async def test_tombstones_go_after_their_own_retention(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False, tombstone_retention_s=30 * 86400)
    now = utcnow()
    ancient = await _add_jobs(env, 2, expires_at=now - timedelta(days=31))  # data still held
    old_stone = await _add_jobs(env, 1, expires_at=now - timedelta(days=40), with_data=False)
    recent_stone = await _add_jobs(env, 1, expires_at=now - timedelta(days=1), with_data=False)
    failed = await _add_jobs(env, 1, expires_at=now - timedelta(days=31), status=JobStatus.FAILED)
    active = await _add_jobs(env, 1, expires_at=now - timedelta(days=99), status=JobStatus.QUEUED)
    async with env.app_runtime.sessions() as session, session.begin():
        session.add(
            IdempotencyKey(scope="anonymous", key="k", job_id=ancient[0], request_hash="h",
                           created_at=now)
        )  # fmt: skip
    sweep = await env.app_runtime.jobs.sweep()
    assert (sweep.forgotten, sweep.tombstones) == (3, 4)
    for job_id in (*ancient, *old_stone, *failed):
        assert (await env.client.get(f"/v1/jobs/{job_id}")).status_code == 404
    assert (await env.client.get(f"/v1/jobs/{recent_stone[0]}/result")).status_code == 410
    assert (await env.client.get(f"/v1/jobs/{active[0]}")).json()["status"] == "queued"
    assert await _count(env, "SELECT count(*) FROM idempotency_keys") == 0
    assert len(_stored(env)) == 1  # the queued job's audio


async def test_idempotency_keys_go_after_their_ttl(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False, idempotency_ttl_s=3600)
    first = await env.submit(DISTINCT[0].path, headers={"Idempotency-Key": "old"})
    await env.submit(DISTINCT[1].path, headers={"Idempotency-Key": "fresh"})
    async with env.app_runtime.sessions() as session, session.begin():
        await session.execute(
            IdempotencyKey.__table__.update()
            .where(IdempotencyKey.key == "old")
            .values(created_at=utcnow() - timedelta(hours=2))
        )
    sweep = await env.app_runtime.jobs.sweep()
    assert sweep.idempotency_keys == 1
    keys = await env.sql("SELECT key FROM idempotency_keys")
    assert [row[0] for row in keys] == ["fresh"]
    retried = await env.submit(DISTINCT[0].path, headers={"Idempotency-Key": "old"})
    assert retried.status_code == 202
    assert retried.json()["id"] != first.json()["id"]  # a new job: the key had expired


async def test_audio_no_job_refers_to_is_deleted_once_it_is_old(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False)
    hour = env.settings.jobs.orphan_audio_age_s
    queued = await env.submit(DISTINCT[0].path)
    held = (await env.sql("SELECT audio_key FROM jobs"))[0][0]
    os.utime(_held_path := env.app_runtime.storage.root / held[:2] / held,
             (time.time() - 2 * hour,) * 2)  # fmt: skip
    old_orphan = _place_audio(env, uuid.uuid4().hex, age_s=hour + 60)
    old_partial = _place_audio(env, uuid.uuid4().hex, age_s=hour + 60, partial=True)
    young_orphan = _place_audio(env, uuid.uuid4().hex, age_s=60)
    sweep = await env.app_runtime.jobs.sweep()
    assert sweep.orphans == 2
    assert not old_orphan.exists()
    assert not old_partial.exists()
    assert young_orphan.exists()  # may be an upload whose row is about to commit
    assert _held_path.exists()
    assert (await env.client.get(f"/v1/jobs/{queued.json()['id']}")).status_code == 200
    # Listing the store is paced: the next pass starts a quarter of the orphan age later.
    later = _place_audio(env, uuid.uuid4().hex, age_s=hour + 60)
    assert (await env.app_runtime.jobs.sweep()).orphans == 0
    assert later.exists()


async def test_the_tracker_sweeps_on_its_interval(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(retention_s=1.0, sweep_interval_s=0.3)
    job_id = (await env.submit(DISTINCT[2].path)).json()["id"]
    assert (await env.wait(job_id))["status"] == "succeeded"
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        result = await env.client.get(f"/v1/jobs/{job_id}/result")
        if result.status_code == 410:
            break
        await asyncio.sleep(0.1)
    assert result.status_code == 410, result.text
    # The sweep commits the tombstone before it deletes the file (a crash in between
    # leaves an orphan the next sweep finds, never a row without its audio), so the 410
    # can be seen a moment before the file is gone.
    for _ in range(100):
        if not _stored(env):
            break
        await asyncio.sleep(0.05)
    assert _stored(env) == set()
