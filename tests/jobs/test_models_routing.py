"""Several served models without Ray: the ingress and the tracker route by the model asked.

The app and a `TrackerCore` (one runner per model) on the embedded SQLite, as the two-model
Serve app runs them. Each model's transcriber is the real tiny.en engine behind a counter
(a fake only behind the `Transcriber` protocol): the counts say where each request went.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.job_tracker import TrackerCore
from deployments.dependencies import build_ingress_resources
from deployments.fastapi_app import create_app
from services.core.settings import Settings
from services.migrations import upgrade as migrate
from services.resources import build_resources
from services.transcription.local import LocalTranscriber
from tests.conftest import DISTINCT
from tests.jobs.conftest import CountingTranscriber

MODELS = ["tiny.en", "base"]


@pytest.fixture
async def two_models(
    tmp_path: Path, local_transcriber: LocalTranscriber
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, CountingTranscriber], TrackerCore]]:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        whisper={"model": "tiny.en", "models": MODELS},
        jobs={"poll_interval_s": 0.1, "retry_backoff_s": 0.05},
    )
    await asyncio.to_thread(migrate, settings.database_url)
    counters = {model: CountingTranscriber(local_transcriber) for model in MODELS}
    tracker = TrackerCore(settings, counters, name="t")
    runtime = build_resources(settings, nudge=lambda: None)
    app = create_app(build_ingress_resources(runtime, counters))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        try:
            yield client, counters, tracker
        finally:
            await tracker.shutdown()
            await runtime.close()


async def _transcribe(client: httpx.AsyncClient, model: str, clip: int = 0) -> dict[str, Any]:
    response = await client.post(
        "/v1/audio/transcriptions",
        files={"file": (DISTINCT[clip].name, DISTINCT[clip].path.read_bytes())},
        data={"model": model},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_requests_go_to_their_models_and_caches_stay_apart(two_models: Any) -> None:
    client, counters, _ = two_models
    await _transcribe(client, "base")
    assert (counters["base"].calls, counters["tiny.en"].calls) == (1, 0)
    await _transcribe(client, "whisper-1")  # the same audio: the default's cache is its own
    assert (counters["base"].calls, counters["tiny.en"].calls) == (1, 1)
    await _transcribe(client, "tiny.en")  # the default by its id: served from its cache
    await _transcribe(client, "base")
    assert (counters["base"].calls, counters["tiny.en"].calls) == (1, 1)
    refused = await client.post(
        "/v1/audio/transcriptions",
        files={"file": (DISTINCT[0].name, DISTINCT[0].path.read_bytes())},
        data={"model": "small"},
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "model_not_found"


async def _wait(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    for _ in range(1200):
        view: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}")).json()
        if view["status"] not in ("queued", "running"):
            return view
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


async def _submit(
    client: httpx.AsyncClient, model: str, key: str | None = None, clip: int = 1
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return await client.post(
        "/v1/jobs",
        files={"file": (DISTINCT[clip].name, DISTINCT[clip].path.read_bytes())},
        data={"model": model},
        headers=headers,
    )


async def test_the_tracker_runs_each_job_on_its_model(two_models: Any) -> None:
    client, counters, tracker = two_models
    on_base = await _submit(client, "base")
    on_default = await _submit(client, "whisper-1", clip=2)
    assert on_base.status_code == on_default.status_code == 202
    assert (on_base.json()["model"], on_default.json()["model"]) == ("base", "tiny.en")
    await tracker.nudge()
    for submitted in (on_base, on_default):
        assert (await _wait(client, submitted.json()["id"]))["status"] == "succeeded"
    assert (counters["base"].calls, counters["tiny.en"].calls) == (1, 1)
    status = await tracker.status()
    assert set(status["models"]) == set(MODELS)
    assert len(set(status["models"].values())) == 2  # an incarnation (lease token) each


async def test_an_idempotency_key_names_one_model(two_models: Any) -> None:
    client, _, _ = two_models
    first = await _submit(client, "base", key="k1")
    assert first.status_code == 202
    replay = await _submit(client, "base", key="k1")
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json()["id"] == first.json()["id"]
    other = await _submit(client, "tiny.en", key="k1")
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    default = await _submit(client, "whisper-1", key="k2")
    same_default = await _submit(client, "tiny.en", key="k2")  # `whisper-1` is tiny.en
    assert same_default.json()["id"] == default.json()["id"]
    with contextlib.suppress(Exception):
        await _wait(client, first.json()["id"])
