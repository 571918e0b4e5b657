"""Batches tests: the real app and database (PostgreSQL with Redis, or SQLite), Ray's Jobs
API behind the `RayJobs` seam (a fake here; `test_ray_cluster.py` uses a real cluster).

The app is built the way the ingress builds it (`build_ingress_resources`), with the fake
passed in; tokens come from the local IdP of the auth tests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio
from sqlalchemy import text

from deployments.dependencies import build_ingress_resources
from deployments.fastapi_app import create_app
from services.bulk.batches_errors import RayJobsError
from services.bulk.batches_ray import RayJobInfo, RayJobSpec, RayJobStatus
from services.core.auth_settings import AuthMode, AuthSettings
from services.core.settings import Settings
from services.migrations import upgrade as migrate
from services.resources import Resources, build_resources
from tests.idp import API_CLIENT, LocalIdP
from tests.servers import create_database, drop_database, shared_redis_url


class FakeRay:
    """Ray's Jobs API as the service sees it: submissions recorded, statuses set by tests."""

    def __init__(self) -> None:
        self.specs: dict[str, RayJobSpec] = {}
        self.jobs: dict[str, RayJobInfo] = {}
        self.stopped: list[str] = []
        self.down = False
        self.log_lines = [f"line {i}" for i in range(1, 501)]
        self._lock = threading.Lock()

    def _check(self) -> None:
        if self.down:
            raise RayJobsError("connection refused (the fake cluster is down)")

    def submit(self, spec: RayJobSpec) -> str:
        self._check()
        with self._lock:
            self.specs[spec.submission_id] = spec
            self.jobs[spec.submission_id] = RayJobInfo(RayJobStatus.PENDING)
        return spec.submission_id

    def info(self, submission_id: str) -> RayJobInfo | None:
        self._check()
        return self.jobs.get(submission_id)

    def stop(self, submission_id: str) -> None:
        self._check()
        self.stopped.append(submission_id)
        if submission_id in self.jobs:
            self.jobs[submission_id] = RayJobInfo(
                RayJobStatus.STOPPED, "Job was intentionally stopped."
            )

    def logs(self, submission_id: str) -> str:
        self._check()
        return "\n".join(self.log_lines) + "\n"

    def set(self, submission_id: str, status: RayJobStatus, message: str | None = None) -> None:
        self.jobs[submission_id] = RayJobInfo(status, message)


class NoTranscriber:
    """The batches API never transcribes in the ingress; this fills the seam."""

    async def transcribe(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the batches tests never transcribe")

    async def ready(self) -> bool:
        return True


@pytest.fixture(scope="session")
async def batches_postgres() -> AsyncIterator[str]:
    name, url = await create_database()
    await asyncio.to_thread(migrate, url)
    yield url
    await drop_database(name)


@pytest.fixture(scope="session")
def batches_redis() -> str:
    return shared_redis_url()


@pytest.fixture(scope="session")
def idp() -> Iterator[LocalIdP]:
    provider = LocalIdP()
    provider.add_key("RSA")
    provider.start()
    yield provider
    provider.stop()


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class BatchesEnv:
    settings: Settings
    client: httpx.AsyncClient
    ray: FakeRay
    runtime: Resources
    roots: Path
    idp: LocalIdP | None = None
    extra: list[Any] = field(default_factory=list)

    def token(self, sub: str = "alice", *roles: str) -> dict[str, str]:
        assert self.idp is not None
        token = self.idp.token(sub=sub, client_roles=roles or ("bulk",))
        return {"Authorization": f"Bearer {token}"}

    async def submit(self, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
        payload = {"input": str(self.roots / "in"), "output": str(self.roots / "out"), **body}
        return await self.client.post("/v1/batches", json=payload, headers=headers or {})

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        async with self.runtime.sessions() as session:
            return list((await session.execute(text(statement), params)).all())


EnvFactory = Callable[..., Awaitable[BatchesEnv]]


@pytest.fixture
async def batches_env(
    backend: str,
    tmp_path: Path,
    batches_postgres: str,
    batches_redis: str,
    idp: LocalIdP,
) -> AsyncIterator[EnvFactory]:
    """Builds the app; keyword arguments: `auth` (use the IdP), `limits`, `bulk` overrides."""
    made: list[BatchesEnv] = []

    async def make(
        *, auth: bool = False, limits: dict[str, Any] | None = None, **bulk: Any
    ) -> BatchesEnv:
        roots = tmp_path / "allowed"
        (roots / "in").mkdir(parents=True, exist_ok=True)
        (roots / "out").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data").mkdir(exist_ok=True)
        values: dict[str, Any] = {
            "_env_file": None,
            "data_dir": tmp_path / "data",
            "bulk": {"allowed_roots": [str(roots), "s3://media/allowed"], **bulk},
            "limits": limits or {},
        }
        if backend == "postgres":
            values["database"] = {"url": batches_postgres}
            values["redis"] = {"url": batches_redis}
        if auth:
            values["auth"] = AuthSettings(
                mode=AuthMode.JWT,
                issuer=idp.issuer,
                audience=API_CLIENT,
                client_id=API_CLIENT,
                open_docs=False,
            )
        settings = Settings(**values)
        await _reset(settings, backend)
        ray = FakeRay()
        runtime = build_resources(settings, nudge=lambda: None)
        app = create_app(build_ingress_resources(runtime, NoTranscriber(), ray_jobs=ray))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        env = BatchesEnv(settings, client, ray, runtime, roots, idp if auth else None)
        made.append(env)
        return env

    yield make
    for env in made:
        await env.client.aclose()
        await env.runtime.close()


async def _reset(settings: Settings, backend: str) -> None:
    if backend == "sqlite":
        await asyncio.to_thread(migrate, settings.database_url)
        return
    runtime = build_resources(settings, nudge=lambda: None)
    async with runtime.sessions() as session, session.begin():
        await session.execute(text("TRUNCATE batches"))
    await runtime.close()
    assert settings.redis.url is not None
    client = redis.asyncio.Redis.from_url(settings.redis.url.get_secret_value())
    await client.flushdb()
    await client.aclose()
