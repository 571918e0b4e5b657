"""Durable jobs on the real cluster: many at once, and replicas or the tracker killed mid-run."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx
import pytest
import ray

from cluster.job_tracker import NAMESPACE, tracker_name
from deployments import local
from tests.conftest import ENGLISH, word_error_rate

pytestmark = pytest.mark.integration


async def _submit_all(url: str, clips: list[Any]) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(clip: Any) -> str:
            response = await client.post(
                "/v1/jobs",
                files={"file": (clip.name, clip.path.read_bytes())},
                data={"model": "whisper-1"},
            )
            assert response.status_code == 202, response.text
            return str(response.json()["id"])

        return list(await asyncio.gather(*(one(c) for c in clips)))


def _wait_all(http: httpx.Client, ids: list[str], timeout_s: float = 300) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            if http.get(f"/v1/jobs/{job_id}").json()["status"] in ("succeeded", "failed"):
                pending.discard(job_id)
        time.sleep(0.5)
    assert not pending, f"{len(pending)} jobs never finished"
    return [http.get(f"/v1/jobs/{job_id}").json() for job_id in ids]


def _wait_for_running(http: httpx.Client, ids: list[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = {http.get(f"/v1/jobs/{job_id}").json()["status"] for job_id in ids[:8]}
        if "running" in statuses:
            return
        time.sleep(0.1)
    raise AssertionError("no job started running")


async def _result_rows(database_url: str, ids: list[str]) -> dict[str, int]:
    dsn = database_url.replace("postgresql+asyncpg", "postgresql")
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT job_id, count(*) AS n FROM job_results WHERE job_id = ANY($1::text[]) "
            "GROUP BY job_id",
            ids,
        )
        jobs = await connection.fetchval(
            "SELECT count(*) FROM jobs WHERE id = ANY($1::text[])", ids
        )
    finally:
        await connection.close()
    assert jobs == len(ids), "one job row per 202"
    return {row["job_id"]: row["n"] for row in rows}


def _check_all_succeeded(
    http: httpx.Client, serve_database: str, clips: list[Any], ids: list[str]
) -> list[dict[str, Any]]:
    finished = _wait_all(http, ids)
    assert [f["status"] for f in finished] == ["succeeded"] * len(ids), [
        f.get("error") for f in finished
    ]
    rates = []
    for clip, job_id in zip(clips, ids, strict=True):
        text = http.get(f"/v1/jobs/{job_id}/result").json()["text"]
        rates.append(word_error_rate(clip.text, text))
        assert rates[-1] < 0.75, (clip.name, text)  # packed windows vary per run
    assert sum(rates) / len(rates) < 0.15
    rows = asyncio.run(_result_rows(serve_database, ids))
    assert rows == dict.fromkeys(ids, 1), "exactly one result row per job"
    return finished


def test_fifty_jobs_at_once(serve_url: str, http: httpx.Client, serve_database: str) -> None:
    clips = [ENGLISH[i % 8] for i in range(50)]
    ids = asyncio.run(_submit_all(serve_url, clips))
    _check_all_succeeded(http, serve_database, clips, ids)


def test_jobs_survive_a_killed_whisper_replica(
    serve_url: str, http: httpx.Client, serve_database: str
) -> None:
    clips = [ENGLISH[i % 16] for i in range(16)]
    ids = asyncio.run(_submit_all(serve_url, clips))
    _wait_for_running(http, ids)
    replicas = [
        actor
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if f"{local.APP_NAME}#WhisperTranscriber" in actor["name"]
    ]
    assert len(replicas) == 1
    replica = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
    ray.kill(replica, no_restart=True)  # Serve's controller starts a new one
    finished = _check_all_succeeded(http, serve_database, clips, ids)
    assert max(f["attempts"] for f in finished) >= 2, "no job shows the retry"


def test_jobs_survive_a_killed_tracker(
    serve_url: str, http: httpx.Client, serve_database: str
) -> None:
    tracker = ray.get_actor(tracker_name(local.APP_NAME), namespace=NAMESPACE)
    epoch_before = ray.get(tracker.status.remote(), timeout=30)["epoch"]
    clips = [ENGLISH[i % 16] for i in range(16)]
    ids = asyncio.run(_submit_all(serve_url, clips))
    _wait_for_running(http, ids)
    ray.kill(tracker, no_restart=False)  # Ray restarts it (max_restarts=-1)
    finished = _check_all_succeeded(http, serve_database, clips, ids)
    status = ray.get(tracker.status.remote(), timeout=60)
    assert status["epoch"] > epoch_before, "the restarted tracker took a new epoch"
    assert max(f["attempts"] for f in finished) >= 2, "no job shows the retry"
