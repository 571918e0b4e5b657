"""Durable jobs on the real cluster: many at once, and replicas or the tracker killed mid-run."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest
import ray

from tests import serve_local as local
from tests.conftest import ENGLISH, report, word_error_rate
from tests.integration.serve_admin import (
    tracker_replicas,
    tracker_statuses,
    wait_for_new_trackers,
    whisper_queue_limit,
)

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
    # A replica restarting is an interruption: it shows, but uses up no attempt.
    assert max(f["interruptions"] for f in finished) >= 1, "no job shows the interruption"
    assert [f["attempts"] for f in finished] == [1] * len(ids)


def test_jobs_survive_a_killed_tracker(
    serve_url: str, http: httpx.Client, serve_database: str
) -> None:
    (before,) = tracker_statuses()
    old = tracker_replicas()
    clips = [ENGLISH[i % 16] for i in range(16)]
    ids = asyncio.run(_submit_all(serve_url, clips))
    _wait_for_running(http, ids)
    (name,) = old
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)  # Serve starts a new one
    finished = _check_all_succeeded(http, serve_database, clips, ids)
    (status,) = wait_for_new_trackers(old)
    assert status["name"] != before["name"], "Serve replaced the killed replica"
    assert status["epoch"] > before["epoch"], "the new tracker took a new lease token"
    # A tracker that died mid-job may have died of it: that counts as an attempt. Its
    # leases are taken over when they expire (`jobs.lease_s`, 10 s here).
    assert max(f["attempts"] for f in finished) >= 2, "no job shows the retry"
    report(f"killed tracker: replaced by {status['name']} (epoch {status['epoch']})")


async def _sync_burst(url: str, *, seconds: float, concurrency: int) -> Counter[int]:
    """`concurrency` clients sending short sync requests back to back for `seconds`."""
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    clip = ENGLISH[0]
    audio = clip.path.read_bytes()
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one_client() -> None:
            while time.monotonic() < deadline:
                response = await client.post(
                    "/v1/audio/transcriptions",
                    files={"file": (clip.name, audio)},
                    data={"model": "whisper-1"},
                )
                statuses[response.status_code] += 1
                if response.status_code == 503:
                    assert int(response.headers["retry-after"]) > 0
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return statuses


def test_jobs_ride_out_a_burst_that_fills_the_model_queue(
    serve_url: str, http: httpx.Client, serve_database: str
) -> None:
    started = time.monotonic()
    clips = [ENGLISH[i % 16] for i in range(16)]
    with whisper_queue_limit(1):  # the tracker (4 jobs in flight) overflows it as well
        ids = asyncio.run(_submit_all(serve_url, clips))
        statuses = asyncio.run(_sync_burst(serve_url, seconds=12, concurrency=48))
    finished = _check_all_succeeded(http, serve_database, clips, ids)
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[503] > 0, f"the burst never filled the queue: {statuses}"
    interruptions = [f["interruptions"] for f in finished]
    assert max(interruptions) >= 1, "no job met the full queue"
    assert [f["attempts"] for f in finished] == [1] * len(ids)
    report(
        f"burst: sync statuses {dict(sorted(statuses.items()))}; jobs "
        f"{sum(f['status'] == 'succeeded' for f in finished)}/{len(ids)} succeeded, "
        f"max interruptions {max(interruptions)}, in {time.monotonic() - started:.0f} s"
    )
