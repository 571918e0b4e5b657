"""/readyz answers from state the ingress holds: never through the model's queue."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.dependencies import build_ingress_resources
from deployments.fastapi_app import create_app
from services.core.health import HeldStatus, Refresher
from services.core.settings import Settings
from services.migrations import upgrade as migrate
from services.resources import build_resources


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_held_status_goes_stale() -> None:
    clock = _Clock()
    held = HeldStatus(max_age_s=5, clock=clock)
    assert not await held()  # nothing known yet
    held.set(True)
    clock.now += 4
    assert await held()
    clock.now += 2  # the refresher stopped reporting: old good news is no news
    assert not await held()
    held.set(True)
    assert await held()


def test_the_refresher_records_probes_and_failures_as_down() -> None:
    up, broken = HeldStatus(), HeldStatus(ok=True)

    def fail() -> bool:
        raise ConnectionError("actor unreachable")

    refresher = Refresher({"up": (up, lambda: True), "broken": (broken, fail)}, interval_s=1)
    assert refresher.refresh_once("up")
    assert up.ok
    assert not refresher.refresh_once("broken")
    assert not broken.ok


class _SaturatedTranscriber:
    """A model whose queue never moves: anything sent to it waits forever."""

    async def transcribe(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()

    async def ready(self) -> bool:
        await asyncio.Event().wait()
        return True


@pytest.fixture
async def probe(tmp_path: Path) -> Any:
    settings = Settings(_env_file=None, data_dir=tmp_path)
    await asyncio.to_thread(migrate, settings.database_url)
    runtime = build_resources(settings, nudge=lambda: None)
    model, jobs = HeldStatus(ok=True), HeldStatus(ok=False)
    resources = build_ingress_resources(runtime, _SaturatedTranscriber(), model=model, jobs=jobs)
    transport = httpx.ASGITransport(app=create_app(resources))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client, model, jobs
    await runtime.close()


async def test_readyz_reads_held_state_and_never_calls_the_model(probe: Any) -> None:
    client, model, jobs = probe
    started = time.monotonic()
    ready = await client.get("/readyz")
    assert time.monotonic() - started < 1.0  # acceptance is 2 s; the model was never asked
    assert ready.status_code == 200
    # The tracker is reported, not required: jobs wait durably while it restarts.
    assert ready.json() == {
        "status": "ready", "model": "ok", "database": "ok", "jobs": "down", "auth": "off"
    }  # fmt: skip
    jobs.set(True)
    assert (await client.get("/readyz")).json()["jobs"] == "ok"
    model.set(False)
    down = await client.get("/readyz")
    assert down.status_code == 503
    assert down.json() == {
        "status": "unavailable", "model": "down", "database": "ok", "jobs": "ok", "auth": "off"
    }  # fmt: skip
