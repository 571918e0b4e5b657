"""Per-user limits end to end: two ingress apps (two replicas' worth of resources, in this
process) sharing one PostgreSQL and one Redis, a job runner, and the real tiny.en model.

Each limit answers 429 with a Retry-After that is long enough and not much longer (a retry
after it passes), holds across both apps, and a job whose header under-declares its length
is charged what it really holds. With Redis stopped, counting falls back to each process.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio

from services.core.settings import Settings
from services.migrations import upgrade as migrate
from services.transcription.local import LocalTranscriber
from tests.conftest import ENGLISH, FIXTURES
from tests.jobs.conftest import JobsEnv, _reset, build_env, close_env, make_settings
from tests.servers import PrivateRedis

MP3 = FIXTURES / "formats" / "en_01_en-us.mp3"
FIRST_AUDIO_FRAME = 228
"""Offset of the first audio frame in MP3: after its ID3 tag and its 'Info' frame."""


def under_declared_mp3() -> tuple[bytes, float]:
    """An MP3 whose Info header claims 20 frames (0.47 s) and that holds three copies of
    the clip (about 9.6 s): the declared length is a lie the tracker must see through."""
    data = bytearray(MP3.read_bytes())
    info = data.find(b"Info")
    data[info + 8 : info + 12] = struct.pack(">I", 20)
    frames = bytes(data[FIRST_AUDIO_FRAME:])
    return bytes(data) + frames + frames, 9.6


def _limited(settings: Settings, **limits: Any) -> Settings:
    return settings.model_copy(update={"limits": settings.limits.model_copy(update=limits)})


@pytest.fixture
async def two_apps(
    tmp_path: Path, shared_postgres: str, shared_redis: str, local_transcriber: LocalTranscriber
) -> AsyncIterator[Any]:
    """`make(**limits)` builds two apps over one database and one Redis, and a runner."""
    made: list[JobsEnv] = []

    async def make(**limits: Any) -> tuple[JobsEnv, JobsEnv]:
        base = make_settings(tmp_path, "postgres", shared_postgres, shared_redis)
        settings = _limited(base, **limits)
        await _reset(settings, "postgres", shared_redis)
        first = await build_env(settings, local_transcriber, "postgres")
        second = await build_env(settings, local_transcriber, "postgres")
        made.extend([first, second])
        return first, second

    yield make
    for env in made:
        await close_env(env)


def assert_limited(response: httpx.Response, code: str, limit: int, needed: float = 1.0) -> float:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (code, "rate_limit_error")
    assert error["message"]
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    assert response.headers["RateLimit-Limit"] == str(limit)
    assert 0 <= int(response.headers["RateLimit-Remaining"]) < needed
    assert int(response.headers["RateLimit-Reset"]) >= 1
    return retry_after


async def _transcribe(env: JobsEnv, path: Path) -> httpx.Response:
    data = await asyncio.to_thread(path.read_bytes)
    return await env.client.post(
        "/v1/audio/transcriptions",
        files={"file": (path.name, data)},
        data={"model": "whisper-1"},
    )


async def test_requests_per_period_hold_across_two_replicas_and_recover(two_apps: Any) -> None:
    # One request frees up every 12 s / 4 = 3 s: room for a loaded machine's slow requests.
    a, b = await two_apps(requests_per_minute=4, requests_period_s=12.0)
    answers = [await (a if i % 2 else b).client.get("/v1/models") for i in range(4)]
    assert [r.status_code for r in answers] == [200] * 4
    assert [r.headers["RateLimit-Remaining"] for r in answers] == ["3", "2", "1", "0"]
    refused = await b.client.get("/v1/models")
    retry_after = assert_limited(refused, "rate_limit_exceeded", 4)
    assert 1 <= retry_after <= 3  # the next free request is at most 3 s away
    assert (await a.client.get("/v1/models")).status_code == 429  # the other replica agrees
    assert (await a.client.get("/healthz")).status_code == 200  # probes are never limited
    await asyncio.sleep(retry_after + 0.05)
    assert (await a.client.get("/v1/models")).status_code == 200


async def test_audio_seconds_hold_across_replicas_and_recover(two_apps: Any) -> None:
    clip = ENGLISH[0]  # 3.16 s
    a, b = await two_apps(audio_seconds_per_hour=5.0, audio_period_s=25.0)
    assert (await _transcribe(a, clip.path)).status_code == 200
    started = time.monotonic()
    refused = await _transcribe(b, clip.path)  # 2 x 3.16 s > 5 s (+ 0.2 s/s refilled)
    retry_after = assert_limited(refused, "rate_limit_exceeded", 5, needed=clip.duration_s)
    # 1.3 s short at 0.2 audio-seconds per second, less what refilled meanwhile.
    assert 2 <= retry_after <= 7
    await asyncio.sleep(max(0.0, retry_after - (time.monotonic() - started)) + 0.1)
    assert (await _transcribe(b, clip.path)).status_code == 200


async def test_concurrent_jobs_are_a_database_fact(two_apps: Any) -> None:
    a, b = await two_apps(max_concurrent_jobs=1)
    first = await a.submit(ENGLISH[0].path)
    assert first.status_code == 202, first.text
    refused = await b.submit(ENGLISH[1].path)
    assert_limited(refused, "quota_exceeded", 1)
    assert (await b.sql("SELECT count(*) FROM jobs"))[0][0] == 1  # nothing stored for it
    assert (await a.client.delete(f"/v1/jobs/{first.json()['id']}")).status_code == 200
    assert (await b.submit(ENGLISH[1].path)).status_code == 202


async def test_stored_bytes_quota_and_its_retry_after(two_apps: Any) -> None:
    size = ENGLISH[0].path.stat().st_size
    a, b = await two_apps(max_stored_bytes=int(size * 1.5))
    first = await a.submit(ENGLISH[0].path)
    assert first.status_code == 202
    refused = await b.submit(ENGLISH[0].path, headers={"Idempotency-Key": "other"})
    retry_after = assert_limited(refused, "quota_exceeded", int(size * 1.5))
    # Stored audio goes when the oldest job expires (7 days by default).
    assert 7 * 24 * 3600 - 60 <= retry_after <= 7 * 24 * 3600
    job_url = f"/v1/jobs/{first.json()['id']}"
    await a.client.delete(job_url)  # cancels
    await a.client.delete(job_url)  # and now deletes its audio
    assert (await b.submit(ENGLISH[0].path)).status_code == 202


async def test_an_under_declared_job_is_charged_its_real_length(
    two_apps: Any, shared_redis: str
) -> None:
    data, real_s = under_declared_mp3()
    a, b = await two_apps(audio_seconds_per_hour=13.0)
    await a.start_runner()
    submitted = await a.client.post(
        "/v1/jobs", files={"file": ("lies.mp3", data)}, data={"model": "whisper-1"}
    )
    assert submitted.status_code == 202, submitted.text
    done = await a.wait(submitted.json()["id"])
    assert done["status"] == "succeeded", done
    client = redis.asyncio.Redis.from_url(shared_redis, decode_responses=True)
    try:
        tat_ms = float(await client.get("rayscribe:limits:audio_s:anonymous") or 0)
        seconds, micros = await client.time()
    finally:
        await client.aclose()
    used_s = (tat_ms - (seconds * 1000 + micros / 1000)) / 1000 * 13.0 / 3600.0
    assert used_s == pytest.approx(real_s, abs=0.3)  # not the 1 s charged at submission
    # And it counts: 9.6 s + 5.3 s is over 13 s (1 s + 5.3 s would have passed).
    refused = await _transcribe(b, ENGLISH[1].path)
    assert_limited(refused, "rate_limit_exceeded", 13, needed=ENGLISH[1].duration_s)


async def test_with_redis_stopped_each_process_still_limits(
    tmp_path: Path, private_redis: PrivateRedis, local_transcriber: LocalTranscriber
) -> None:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        redis={"url": private_redis.url, "timeout_s": 0.2, "breaker_reset_s": 30.0},
        limits={"requests_per_minute": 3, "requests_period_s": 30.0},
    )
    await asyncio.to_thread(migrate, settings.database_url)
    env = await build_env(settings, local_transcriber, "sqlite")
    try:
        ready = (await env.client.get("/readyz")).json()
        assert ready["rate_limits"] == "ok"
        assert (await env.client.get("/v1/models")).status_code == 200  # counted in Redis
        private_redis.stop()
        started = time.monotonic()
        answers = [(await env.client.get("/v1/models")).status_code for _ in range(5)]
        # Redis is gone: the local table starts empty and allows its 3, then refuses.
        assert answers == [200, 200, 200, 429, 429]
        assert time.monotonic() - started < 5  # the breaker spares the timeouts
        ready = await env.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["rate_limits"] == "per_process"
    finally:
        await close_env(env)


async def test_a_refused_job_is_not_charged(two_apps: Any) -> None:
    a, _ = await two_apps(audio_seconds_per_hour=100.0, max_concurrent_jobs=1)
    assert (await a.submit(ENGLISH[0].path)).status_code == 202
    for _ in range(3):  # refused by the concurrency quota: their audio is refunded
        assert (await a.submit(ENGLISH[1].path)).status_code == 429
    client = redis.asyncio.Redis.from_url(a.settings.redis.url.get_secret_value())  # type: ignore[union-attr]
    try:
        tat_ms = float(await client.get("rayscribe:limits:audio_s:anonymous") or 0)
        seconds, micros = await client.time()
    finally:
        await client.aclose()
    used_s = (tat_ms - (seconds * 1000 + micros / 1000)) / 1000 * 100.0 / 3600.0
    assert used_s == pytest.approx(ENGLISH[0].duration_s, abs=0.1)
