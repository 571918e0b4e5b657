"""Several models at once: the two-model app (tiny.en, the default, and base) on Serve.

Each model has a Whisper deployment of its own; the ingress routes `model` to it, the
tracker routes each job to it, and `/v1/models` lists both with what they can do.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from ray import serve
from ray.serve.context import _get_global_client

from services.transcription.languages import language_name
from tests.conftest import DISTINCT, FOREIGN, Clip
from tests.integration.conftest import (
    BASE_DEPLOYMENT,
    BASE_MAX_QUEUED,
    MULTI_APP_NAME,
    MULTI_MODELS,
    MULTI_PREFIX,
)

pytestmark = pytest.mark.integration


async def _stats(deployment: str) -> dict[str, Any]:
    handle = serve.get_deployment_handle(deployment, app_name=MULTI_APP_NAME)
    stats: dict[str, Any] = await handle.stats.remote()
    return stats


def test_models_lists_each_served_model_with_what_it_can_do(multi_http: httpx.Client) -> None:
    listed = multi_http.get("/v1/models")
    assert listed.status_code == 200, listed.text
    cards = {card["id"]: card for card in listed.json()["data"]}
    assert list(cards) == MULTI_MODELS
    tiny, base = cards["tiny.en"], cards["base"]
    assert (tiny["default"], tiny["translates"], tiny["languages"]) == (True, False, ["en"])
    assert (base["default"], base["translates"]) == (False, True)
    assert {"en", "de", "fr", "es"} <= set(base["languages"])
    assert len(base["languages"]) == 99
    alias = multi_http.get("/v1/models/whisper-1").json()
    assert (alias["id"], alias["default"], alias["translates"]) == ("whisper-1", True, False)
    assert multi_http.get("/v1/models/base").json()["translates"] is True
    assert multi_http.get("/v1/models/small").status_code == 404


def test_each_model_deployment_takes_its_own_config_entry(multi_http: httpx.Client) -> None:
    """`WhisperTranscriber` configures the default model's deployment, and an entry named
    `WhisperTranscriber_base` the base model's (the conftest sets a distinctive limit)."""
    details = _get_global_client().get_serve_details()
    deployments = details["applications"][MULTI_APP_NAME]["deployments"]
    assert {"WhisperTranscriber", BASE_DEPLOYMENT} <= set(deployments)
    assert deployments[BASE_DEPLOYMENT]["deployment_config"]["max_queued_requests"] == (
        BASE_MAX_QUEUED
    )
    assert deployments["WhisperTranscriber"]["deployment_config"]["max_queued_requests"] == 128
    # The replica count comes from the entries (the code sets no autoscaling_config).
    for name in ("WhisperTranscriber", BASE_DEPLOYMENT):
        scaling = deployments[name]["deployment_config"]["autoscaling_config"]
        assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 1), name
    assert multi_http.get("/readyz").json()["model"] == "ok"


async def _transcribe(client: httpx.AsyncClient, clip: Clip, model: str) -> dict[str, Any]:
    response = await client.post(
        "/v1/audio/transcriptions",
        files={"file": (clip.name, clip.path.read_bytes())},
        data={"model": model, "response_format": "verbose_json"},
    )
    assert response.status_code == 200, (model, clip.name, response.text)
    body: dict[str, Any] = response.json()
    return body


async def test_interleaved_requests_each_answered_by_the_model_asked(serve_url: str) -> None:
    """Foreign speech to both models at once: base detects its language, tiny.en (English
    only) answers in English; each deployment counts exactly the requests sent to it."""
    clips = FOREIGN[:4]
    plan = [(clip, model) for clip in clips for model in ("base", "tiny.en")]
    plan += [(DISTINCT[1], "whisper-1"), (DISTINCT[2], "base")]
    before = {name: await _stats(name) for name in ("WhisperTranscriber", BASE_DEPLOYMENT)}
    async with httpx.AsyncClient(base_url=serve_url + MULTI_PREFIX, timeout=300) as client:
        answers = await asyncio.gather(*(_transcribe(client, c, m) for c, m in plan))
    for (clip, model), body in zip(plan, answers, strict=True):
        expected = clip.language if model == "base" else "en"
        assert body["language"] == language_name(expected), (clip.name, model, body)
    after = {name: await _stats(name) for name in before}
    # The app's result cache is on: a repeat (another test's) would not reach the model,
    # so at most as many requests reached each deployment as were sent to it, and some did.
    sent = {"WhisperTranscriber": 5, BASE_DEPLOYMENT: 5}
    for name, count in sent.items():
        batches = after[name]["batches"] - before[name]["batches"]
        assert 1 <= batches <= count * 4, (name, before[name], after[name])


async def _job(client: httpx.AsyncClient, clip: Clip, model: str) -> dict[str, Any]:
    submitted = await client.post(
        "/v1/jobs",
        files={"file": (clip.name, clip.path.read_bytes())},
        data={"model": model},
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        view: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}")).json()
        if view["status"] in ("succeeded", "failed", "cancelled"):
            assert view["status"] == "succeeded", view
            result = await client.get(
                f"/v1/jobs/{job_id}/result", params={"response_format": "verbose_json"}
            )
            assert result.status_code == 200, result.text
            return {"view": view, "result": result.json()}
        await asyncio.sleep(0.3)
    raise AssertionError(f"job {job_id} ({model}) did not finish")


async def test_jobs_run_on_the_model_they_name(serve_url: str) -> None:
    clip = FOREIGN[0]
    async with httpx.AsyncClient(base_url=serve_url + MULTI_PREFIX, timeout=60) as client:
        on_base, on_tiny, on_default = await asyncio.gather(
            *(_job(client, clip, model) for model in ("base", "tiny.en", "whisper-1"))
        )
    assert on_base["view"]["model"] == "base"
    assert on_base["result"]["language"] == language_name(clip.language)
    for job in (on_tiny, on_default):
        assert job["view"]["model"] == "tiny.en"
        assert job["result"]["language"] == "english"


def test_unknown_models_are_refused_everywhere(multi_http: httpx.Client) -> None:
    clip = DISTINCT[0]
    for path in ("/v1/audio/transcriptions", "/v1/audio/translations", "/v1/jobs"):
        response = multi_http.post(
            path, files={"file": (clip.name, clip.path.read_bytes())}, data={"model": "small"}
        )
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("model_not_found", "model")
        assert "'tiny.en', 'base'" in error["message"], error
