"""The jobs use case against real databases, without Ray.

Every test runs twice: on PostgreSQL with Redis (the machine's shared servers) and on the
embedded SQLite without Redis. The ingress app and the job runner run in this process on
separate resources, as they do in separate processes in production; the model is the real
tiny.en engine behind the in-process transcriber.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio
from sqlalchemy import text

from deployments.dependencies import build_ingress_resources
from deployments.fastapi_app import create_app
from services.core.settings import Settings
from services.jobs.runner import JobRunner
from services.migrations import upgrade as migrate
from services.resources import Resources, build_resources
from services.transcription.domain import Transcript, TranscriptionOptions, Waveform
from services.transcription.engine import WhisperEngine
from services.transcription.local import LocalTranscriber
from tests.servers import create_database, drop_database, shared_redis_url

TABLES = "jobs, job_results, job_chunks, idempotency_keys, tracker_incarnations"


@pytest.fixture(scope="session")
async def shared_postgres() -> AsyncIterator[str]:
    name, url = await create_database()
    await asyncio.to_thread(migrate, url)  # Alembic runs its own event loop
    yield url
    await drop_database(name)


@pytest.fixture(scope="session")
def shared_redis() -> str:
    return shared_redis_url()


@pytest.fixture(scope="session")
def local_transcriber(tiny_engine: WhisperEngine) -> LocalTranscriber:
    return LocalTranscriber(tiny_engine)


class CountingTranscriber:
    """The real transcriber, counting what is sent to it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    async def transcribe(
        self, audio: Waveform, options: TranscriptionOptions, *, background: bool = False
    ) -> Transcript:
        self.calls += 1
        result: Transcript = await self.inner.transcribe(audio, options, background=background)
        return result

    async def ready(self) -> bool:
        return True


@dataclass
class JobsEnv:
    backend: str
    settings: Settings
    client: httpx.AsyncClient
    app_runtime: Resources
    runner_runtime: Resources
    transcriber: Any
    speakers: Any = None
    """The runner's `SpeakerLabeller` (diarized jobs), if any."""
    runner: JobRunner | None = None
    _task: asyncio.Task[None] | None = None
    _wake: asyncio.Event | None = None

    async def start_runner(self, name: str = "test-tracker") -> JobRunner:
        self._wake = asyncio.Event()
        self.runner = self.runner_runtime.runner(name, self.transcriber, speakers=self.speakers)
        await self.runner.start()
        self._task = asyncio.create_task(self.runner.run_forever(self._wake))
        return self.runner

    async def stop_runner(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def nudge(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        async with self.app_runtime.sessions() as session:
            return list((await session.execute(text(statement), params)).all())

    async def submit(self, path: Path, **fields: Any) -> httpx.Response:
        headers = fields.pop("headers", {})
        with path.open("rb") as f:
            return await self.client.post(
                "/v1/jobs",
                files={"file": (path.name, f.read())},
                data={"model": "whisper-1", **fields},
                headers=headers,
            )

    async def wait(self, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
        """Poll like a client until the job finishes."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            body: dict[str, Any] = (await self.client.get(f"/v1/jobs/{job_id}")).json()
            if body["status"] in ("succeeded", "failed", "cancelled"):
                return body
            await asyncio.sleep(0.1)
        raise TimeoutError(f"job {job_id} did not finish")


def make_settings(
    data_dir: Path, backend: str, postgres: str, redis: str, diarization: bool = False, **jobs: Any
) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=data_dir,
        database={"url": postgres if backend == "postgres" else None},
        redis={"url": redis if backend == "postgres" else None},
        cache={"enabled": False, "status_ttl_s": 30},
        diarization={"enabled": diarization},
        jobs={"poll_interval_s": 0.2, "retry_backoff_s": 0.05, "lease_s": 6, **jobs},
    )


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def build_env(settings: Settings, transcriber: Any, backend: str) -> JobsEnv:
    """The ingress app and a runner on separate resources over one database."""
    holder: list[JobsEnv] = []
    app_runtime = build_resources(settings, nudge=lambda: holder[0].nudge())
    resources = build_ingress_resources(app_runtime, transcriber)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(resources)), base_url="http://test"
    )
    env = JobsEnv(
        backend=backend,
        settings=settings,
        client=client,
        app_runtime=app_runtime,
        runner_runtime=build_resources(settings, nudge=lambda: None),
        transcriber=transcriber,
    )
    holder.append(env)
    return env


async def close_env(env: JobsEnv) -> None:
    await env.stop_runner()
    await env.client.aclose()
    await env.app_runtime.close()
    await env.runner_runtime.close()


async def _reset(settings: Settings, backend: str, redis_url: str) -> None:
    if backend == "sqlite":
        await asyncio.to_thread(migrate, settings.database_url)
        return
    runtime = build_resources(settings, nudge=lambda: None)
    async with runtime.sessions() as session, session.begin():
        await session.execute(text(f"TRUNCATE {TABLES} CASCADE"))
    await runtime.close()
    client = redis.asyncio.Redis.from_url(redis_url)
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def env_factory(
    backend: str,
    tmp_path: Path,
    shared_postgres: str,
    shared_redis: str,
    local_transcriber: LocalTranscriber,
) -> AsyncIterator[Callable[..., Any]]:
    """Builds a jobs environment; keyword arguments override job settings."""
    made: list[JobsEnv] = []

    async def make(
        *, start: bool = True, diarization: bool = False, speakers: Any = None, **jobs: Any
    ) -> JobsEnv:
        settings = make_settings(
            tmp_path, backend, shared_postgres, shared_redis, diarization, **jobs
        )
        await _reset(settings, backend, shared_redis)
        env = await build_env(settings, local_transcriber, backend)
        env.speakers = speakers
        made.append(env)
        if start:
            await env.start_runner()
        return env

    yield make
    for env in made:
        await close_env(env)
