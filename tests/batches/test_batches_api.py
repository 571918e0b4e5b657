"""The batches API on a fake Ray: submit, refresh from Ray, progress rows, stop, logs, list.

Each test runs on PostgreSQL with Redis and on SQLite without Redis.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from typing import Any

from services.bulk.batch_progress import DatabaseProgress
from services.bulk.batches_ray import RayJobStatus
from services.bulk.progress import BulkCounts
from tests.batches.conftest import EnvFactory


async def test_submit_runs_the_bulk_job_with_the_settings_it_needs(
    batches_env: EnvFactory,
) -> None:
    env = await batches_env(code_dir="/opt/rayscribe")
    options = {"format": "jsonl", "language": "en", "subtitles": "srt", "max_workers": 3}
    response = await env.submit(options=options)
    assert response.status_code == 201, response.text
    batch = response.json()
    assert response.headers["Location"] == f"/v1/batches/{batch['id']}"
    assert batch["state"] == "queued"
    assert batch["ray_job_id"] == f"rayscribe-batch-{batch['id']}"
    assert batch["counts"] == {"total": None, "done": 0, "failed": 0, "audio_seconds": 0.0}
    spec = env.ray.specs[batch["ray_job_id"]]
    argv = shlex.split(spec.entrypoint)
    assert argv[:3] == ["python", "-m", "cluster.bulk"]
    flags = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert flags["--input"] == str(env.roots / "in")
    assert flags["--output"] == str(env.roots / "out")
    assert flags["--format"] == "jsonl"
    assert flags["--language"] == "en"
    assert flags["--subtitles"] == "srt"
    assert flags["--max-workers"] == "3"
    assert flags["--batch-id"] == batch["id"]
    # The driver writes progress to the service's own database; the Ray token stays home.
    database = json.loads(spec.env_vars["RAYSCRIBE_DATABASE"])
    assert database.get("url") == (
        None if env.settings.database.url is None else env.settings.database_url
    )
    assert spec.env_vars["RAYSCRIBE_DATA_DIR"] == str(env.settings.data_dir)
    assert spec.env_vars["PYTHONPATH"] == "/opt/rayscribe"
    assert "ray_token" not in spec.env_vars["RAYSCRIBE_BULK"]
    assert "allowed_roots" not in spec.env_vars["RAYSCRIBE_BULK"]


async def test_state_follows_ray_and_counts_follow_the_driver(batches_env: EnvFactory) -> None:
    env = await batches_env(progress_interval_s=3600)
    batch = (await env.submit()).json()
    job = batch["ray_job_id"]
    env.ray.set(job, RayJobStatus.RUNNING)
    running = (await env.client.get(f"/v1/batches/{batch['id']}")).json()
    assert running["state"] == "running"
    assert running["started_at"] is not None

    # The Ray job's driver, as `cluster.bulk --batch-id` runs it, from another thread.
    sink = DatabaseProgress(env.settings, batch["id"])
    await asyncio.to_thread(sink.started, BulkCounts(total=40, done=5))
    for done in range(6, 30):
        await asyncio.to_thread(sink.advanced, BulkCounts(total=40, done=done, audio_seconds=done))
    assert sink.writes == 1, "advanced() must be throttled to progress_interval_s"
    seen = (await env.client.get(f"/v1/batches/{batch['id']}")).json()
    assert seen["counts"]["done"] == 5
    await asyncio.to_thread(
        sink.finished, BulkCounts(total=40, done=37, failed=3, audio_seconds=123.25), None
    )
    assert sink.writes == 2
    env.ray.set(job, RayJobStatus.SUCCEEDED)
    done = (await env.client.get(f"/v1/batches/{batch['id']}")).json()
    assert done["state"] == "succeeded"
    assert done["counts"] == {"total": 40, "done": 37, "failed": 3, "audio_seconds": 123.25}
    assert done["finished_at"] is not None

    # A late, stale status from Ray never moves a finished batch back.
    env.ray.set(job, RayJobStatus.RUNNING)
    assert (await env.client.get(f"/v1/batches/{batch['id']}")).json()["state"] == "succeeded"


async def test_a_failed_ray_job_shows_its_message(batches_env: EnvFactory) -> None:
    env = await batches_env()
    batch = (await env.submit()).json()
    env.ray.set(batch["ray_job_id"], RayJobStatus.FAILED, "Job entrypoint command failed")
    failed = (await env.client.get(f"/v1/batches/{batch['id']}")).json()
    assert failed["state"] == "failed"
    assert "entrypoint command failed" in failed["error"]


async def test_driver_reports_its_own_failure(batches_env: EnvFactory) -> None:
    env = await batches_env()
    batch = (await env.submit()).json()
    sink = DatabaseProgress(env.settings, batch["id"])
    await asyncio.to_thread(sink.started, BulkCounts(total=3))
    await asyncio.to_thread(
        sink.finished, BulkCounts(total=3, done=1), "output_unwritable: permission denied"
    )
    row = (await env.client.get(f"/v1/batches/{batch['id']}")).json()
    assert row["state"] == "failed"
    assert row["error"] == "output_unwritable: permission denied"


async def test_stop_stops_the_ray_job_once(batches_env: EnvFactory) -> None:
    env = await batches_env()
    batch = (await env.submit()).json()
    stopped = await env.client.delete(f"/v1/batches/{batch['id']}")
    assert stopped.status_code == 200
    assert stopped.json()["state"] == "stopped"
    assert env.ray.stopped == [batch["ray_job_id"]]
    again = await env.client.delete(f"/v1/batches/{batch['id']}")
    assert again.status_code == 200
    assert again.json()["state"] == "stopped"
    assert env.ray.stopped == [batch["ray_job_id"]], "a finished batch is not stopped again"


async def test_logs_are_tailed(batches_env: EnvFactory) -> None:
    env = await batches_env()
    batch = (await env.submit()).json()
    response = await env.client.get(f"/v1/batches/{batch['id']}/logs", params={"tail": 3})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "line 498\nline 499\nline 500\n"
    default = await env.client.get(f"/v1/batches/{batch['id']}/logs")
    assert len(default.text.splitlines()) == 200


async def test_list_pages_newest_first_and_filters(batches_env: EnvFactory) -> None:
    env = await batches_env()
    ids = [(await env.submit()).json()["id"] for _ in range(3)]
    env.ray.set(f"rayscribe-batch-{ids[0]}", RayJobStatus.SUCCEEDED)
    first = (await env.client.get("/v1/batches", params={"limit": 2})).json()
    assert [b["id"] for b in first["data"]] == ids[:0:-1]
    second = (
        await env.client.get("/v1/batches", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    assert [b["id"] for b in second["data"]] == [ids[0]]
    assert second["data"][0]["state"] == "succeeded"  # refreshed from Ray while listed
    assert second["next_cursor"] is None
    queued = (await env.client.get("/v1/batches", params={"state": "queued"})).json()
    assert sorted(b["id"] for b in queued["data"]) == sorted(ids[1:])


async def test_ray_down_at_submission_leaves_nothing(batches_env: EnvFactory) -> None:
    env = await batches_env()
    env.ray.down = True
    response = await env.submit()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "bulk_unavailable"
    assert "Retry-After" in response.headers
    assert await env.sql("SELECT id FROM batches") == []


async def test_ray_down_while_reading_answers_from_the_row(batches_env: EnvFactory) -> None:
    env = await batches_env()
    batch = (await env.submit()).json()
    env.ray.down = True
    response = await env.client.get(f"/v1/batches/{batch['id']}")
    assert response.status_code == 200
    assert response.json()["state"] == "queued"
    stop = await env.client.delete(f"/v1/batches/{batch['id']}")
    assert stop.status_code == 503
    logs = await env.client.get(f"/v1/batches/{batch['id']}/logs")
    assert logs.status_code == 503


async def test_no_ray_cluster_configured_is_503(batches_env: EnvFactory) -> None:
    env = await batches_env()
    from services.bulk.batches_service import BatchesService

    service: Any = env.client._transport.app.state.resources.batches  # type: ignore[attr-defined]
    assert isinstance(service, BatchesService)
    service._ray = None
    response = await env.submit()
    assert response.status_code == 503
    assert "bulk.ray_address" in response.json()["error"]["message"]


async def test_audio_seconds_count_against_the_owner_quota(batches_env: EnvFactory) -> None:
    env = await batches_env(limits={"audio_seconds_per_hour": 30, "audio_period_s": 3600})
    batch = (await env.submit()).json()
    sink = DatabaseProgress(env.settings, batch["id"])
    await asyncio.to_thread(sink.started, BulkCounts(total=10))
    await asyncio.to_thread(sink.finished, BulkCounts(total=10, done=10, audio_seconds=95.0), None)
    await env.client.get(f"/v1/batches/{batch['id']}")  # charges, if the driver did not
    row = await env.sql("SELECT charged_audio_s FROM batches WHERE id = :id", id=batch["id"])
    assert row[0][0] == 95.0
    refused = await env.submit()
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "Retry-After" in refused.headers
    # Reading again charges nothing more.
    await env.client.get(f"/v1/batches/{batch['id']}")
    row = await env.sql("SELECT charged_audio_s FROM batches WHERE id = :id", id=batch["id"])
    assert row[0][0] == 95.0
