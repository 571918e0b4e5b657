"""Outages on private servers this test starts and stops itself (never the shared ones)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.core.settings import Settings
from services.migrations import upgrade as migrate
from services.transcription.local import LocalTranscriber
from tests.conftest import DISTINCT, ENGLISH, word_error_rate
from tests.jobs.conftest import JobsEnv, build_env, close_env
from tests.servers import PrivatePostgres, PrivateRedis


def _settings(tmp_path: Path, database: str | None, redis: str | None) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        database={"url": database, "connect_timeout_s": 1.0},
        redis={"url": redis, "timeout_s": 0.3, "breaker_reset_s": 1.0},
        cache={"enabled": False},
        jobs={"poll_interval_s": 0.2, "retry_backoff_s": 0.05, "lease_s": 6},
    )


@pytest.fixture
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    await asyncio.to_thread(migrate, server.url)
    try:
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            server.stop()  # unless the test already stopped it
        server.remove()


async def test_postgres_down_means_503_and_every_accepted_job_completes(
    tmp_path: Path, private_postgres: PrivatePostgres, local_transcriber: LocalTranscriber
) -> None:
    env: JobsEnv = await build_env(
        _settings(tmp_path, private_postgres.url, None), local_transcriber, "postgres"
    )
    try:
        await env.start_runner()
        accepted = [(await env.submit(DISTINCT[0].path)).json()["id"]]
        private_postgres.stop()
        down = [await env.submit(DISTINCT[i % 4].path) for i in range(3)]
        for response in down:
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) > 0
            assert response.json()["error"]["type"] == "server_error"
        ready = await env.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["database"] == "down"
        assert not list(env.settings.audio_dir.rglob("*.bin")), "refused uploads left audio"
        private_postgres.start()
        accepted += [(await env.submit(DISTINCT[i].path)).json()["id"] for i in (1, 2)]
        for job_id in accepted:
            assert (await env.wait(job_id))["status"] == "succeeded"
    finally:
        await close_env(env)


async def test_redis_down_everything_still_works_from_postgres(
    tmp_path: Path,
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    local_transcriber: LocalTranscriber,
) -> None:
    settings = _settings(tmp_path, private_postgres.url, private_redis.url)
    env: JobsEnv = await build_env(settings, local_transcriber, "postgres")
    try:
        ready = (await env.client.get("/readyz")).json()
        assert ready["redis"] == "ok"
        job_id = (await env.submit(DISTINCT[0].path)).json()["id"]
        assert (await env.client.get(f"/v1/jobs/{job_id}")).json()["status"] == "queued"
        private_redis.stop()
        await env.start_runner()
        # Status reads fall back to PostgreSQL: the job is seen finishing, not stuck queued.
        assert (await env.wait(job_id))["status"] == "succeeded"
        second = await env.submit(DISTINCT[1].path)
        assert second.status_code == 202
        assert (await env.wait(second.json()["id"]))["status"] == "succeeded"
        clip = ENGLISH[0]
        with clip.path.open("rb") as f:
            sync = await env.client.post(
                "/v1/audio/transcriptions",
                files={"file": (clip.name, f.read())},
                data={"model": "whisper-1"},
            )
        assert sync.status_code == 200
        assert word_error_rate(clip.text, sync.json()["text"]) < 0.3
        ready = await env.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready", "model": "ok", "database": "ok", "redis": "down", "auth": "off"
        }  # fmt: skip
        # With the breaker open, a dead Redis adds no latency to reads.
        started = asyncio.get_running_loop().time()
        for _ in range(10):
            await env.client.get(f"/v1/jobs/{job_id}")
        assert asyncio.get_running_loop().time() - started < 1.0
    finally:
        await close_env(env)
