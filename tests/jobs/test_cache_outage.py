"""Redis configured but down: transcripts fall back to the in-process LRU, job status never
does (it is read from the database). A private Redis that this test stops; SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import text

from services.core.settings import Settings
from services.migrations import upgrade as migrate
from services.transcription.local import LocalTranscriber
from tests.conftest import DISTINCT, ENGLISH
from tests.jobs.conftest import CountingTranscriber, build_env, close_env
from tests.servers import PrivateRedis


async def test_results_fall_back_to_memory_and_status_reads_the_database(
    tmp_path: Path, private_redis: PrivateRedis, local_transcriber: LocalTranscriber
) -> None:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        redis={"url": private_redis.url, "timeout_s": 0.3, "breaker_reset_s": 1.0},
        cache={"enabled": True, "status_ttl_s": 60},
    )
    await asyncio.to_thread(migrate, settings.database_url)  # Alembic runs its own loop
    transcriber = CountingTranscriber(local_transcriber)
    env = await build_env(settings, transcriber, "sqlite")
    clip = ENGLISH[0]

    async def transcribe() -> Any:
        with clip.path.open("rb") as f:
            response = await env.client.post(
                "/v1/audio/transcriptions",
                files={"file": (clip.name, f.read())},
                data={"model": "whisper-1"},
            )
        assert response.status_code == 200, response.text
        return response.json()["text"]

    try:
        first = await transcribe()
        assert (await transcribe(), transcriber.calls) == (first, 1)  # from Redis
        private_redis.stop()
        # Redis down: recomputed once, then served from this process's LRU.
        assert (await transcribe(), transcriber.calls) == (first, 2)
        assert (await transcribe(), transcriber.calls) == (first, 2)
        assert (await transcribe(), transcriber.calls) == (first, 2)

        # Status: nothing of it may come from a process-local copy.
        job_id = (await env.submit(DISTINCT[0].path)).json()["id"]
        assert (await env.client.get(f"/v1/jobs/{job_id}")).json()["status"] == "queued"
        async with env.app_runtime.sessions() as session, session.begin():
            await session.execute(
                text("UPDATE jobs SET status = 'cancelled' WHERE id = :id"), {"id": job_id}
            )
        assert (await env.client.get(f"/v1/jobs/{job_id}")).json()["status"] == "cancelled"
        ready = (await env.client.get("/readyz")).json()
        assert ready["redis"] == "down"
    finally:
        await close_env(env)
