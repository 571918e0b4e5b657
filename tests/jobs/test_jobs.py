"""Durable jobs on PostgreSQL + Redis and on SQLite alone: API, state machine, recovery."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import srt
import webvtt

from services.jobs.tables import JobStatus
from services.transcription.audio import decode_audio
from services.transcription.domain import SAMPLE_RATE
from tests.audio_variants import encode_flac
from tests.conftest import DISTINCT, ENGLISH, HOSTILE, word_error_rate
from tests.jobs.conftest import JobsEnv

Factory = Callable[..., Any]


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def _results_of(env: JobsEnv, job_id: str) -> int:
    rows = await env.sql("SELECT count(*) FROM job_results WHERE job_id = :id", id=job_id)
    return int(rows[0][0])


async def test_submit_poll_and_fetch_every_format(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory()
    clip = DISTINCT[0]
    submitted = await env.submit(clip.path)
    assert submitted.status_code == 202
    body = submitted.json()
    assert body["status"] == "queued"
    assert submitted.headers["location"] == f"/v1/jobs/{body['id']}"
    done = await env.wait(body["id"])
    assert done["status"] == "succeeded"
    assert done["attempts"] == 1
    assert done["progress"] == {"done": 1, "total": 1}
    assert done["audio_duration_s"] == pytest.approx(clip.duration_s, abs=0.05)
    assert done["started_at"]
    assert done["finished_at"]

    result = await env.client.get(f"/v1/jobs/{body['id']}/result")
    assert word_error_rate(clip.text, result.json()["text"]) < 0.3
    subtitles = await env.client.get(f"/v1/jobs/{body['id']}/result?response_format=srt")
    assert list(srt.parse(subtitles.text))
    captions = await env.client.get(f"/v1/jobs/{body['id']}/result?response_format=vtt")
    assert list(webvtt.from_string(captions.text))
    verbose = await env.client.get(
        f"/v1/jobs/{body['id']}/result",
        params={
            "response_format": "verbose_json",
            "timestamp_granularities[]": ["word", "segment"],
        },
    )
    assert verbose.json()["words"]
    assert verbose.json()["segments"]
    assert await _results_of(env, body["id"]) == 1


async def test_fifty_jobs_at_once_each_with_one_result(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(max_concurrent=4)
    clips = [ENGLISH[i % 6] for i in range(50)]
    responses = await asyncio.gather(*(env.submit(c.path) for c in clips))
    assert all(r.status_code == 202 for r in responses)
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == 50
    finished = await asyncio.gather(*(env.wait(job_id, timeout_s=300) for job_id in ids))
    assert all(f["status"] == "succeeded" for f in finished)
    rates = []
    for clip, job_id in zip(clips, ids, strict=True):
        text = (await env.client.get(f"/v1/jobs/{job_id}/result")).json()["text"]
        rates.append(word_error_rate(clip.text, text))
        assert rates[-1] < 0.75, (clip.name, text)
    assert sum(rates) / len(rates) < 0.15
    rows = await env.sql("SELECT job_id, count(*) FROM job_results GROUP BY job_id")
    assert len(rows) == 50
    assert all(count == 1 for _, count in rows)


async def test_idempotency_key_semantics(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False)
    clip, other = DISTINCT[0], DISTINCT[1]
    first = await env.submit(clip.path, headers={"Idempotency-Key": "k1"})
    again = await env.submit(clip.path, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert _error(await env.submit(other.path, headers={"Idempotency-Key": "k1"}), 409)["code"] == (
        "idempotency_key_reused"
    )
    changed = await env.submit(clip.path, language="de", headers={"Idempotency-Key": "k1"})
    assert _error(changed, 409)["param"] == "Idempotency-Key"
    # Two concurrent requests with one key create one job.
    racing = await asyncio.gather(
        *(env.submit(clip.path, headers={"Idempotency-Key": "race"}) for _ in range(2))
    )
    assert {r.status_code for r in racing} == {202}
    assert racing[0].json()["id"] == racing[1].json()["id"]
    rows = await env.sql("SELECT count(*) FROM jobs")
    assert rows[0][0] == 2
    # No stray audio: duplicates and refusals delete what they stored.
    assert len(list(env.settings.audio_dir.rglob("*"))) - _dirs(env) == 2


def _dirs(env: JobsEnv) -> int:
    return sum(1 for p in env.settings.audio_dir.rglob("*") if p.is_dir())


@pytest.mark.parametrize(
    ("path", "status"),
    [(p, s) for p, s in sorted(HOSTILE.items()) if p.name != "truncated.flac"],
    ids=lambda v: getattr(v, "name", ""),
)
async def test_submission_refuses_what_the_probe_sees(
    env_factory: Factory, path: Any, status: int
) -> None:
    env: JobsEnv = await env_factory(start=False, max_duration_s=600)
    response = await env.submit(path)  # two hours of silence: its header says too long
    _error(response, status)
    assert (await env.sql("SELECT count(*) FROM jobs"))[0][0] == 0


async def test_audio_that_fails_while_decoding_fails_once_with_a_reason(
    env_factory: Factory,
) -> None:
    env: JobsEnv = await env_factory()
    truncated = next(p for p in HOSTILE if p.name == "truncated.flac")
    submitted = await env.submit(truncated)
    assert submitted.status_code == 202  # its header is fine: only decoding finds the cut
    done = await env.wait(submitted.json()["id"])
    assert done["status"] == "failed"
    assert done["attempts"] == 1
    assert "truncated" in done["error"]


async def test_jobs_have_their_own_upload_limit(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False, max_upload_bytes=50_000)
    big = max(ENGLISH, key=lambda c: c.path.stat().st_size)
    assert _error(await env.submit(big.path), 413)["code"] == "file_too_large"


def _long_audio(seconds: float) -> bytes:
    gap = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    parts: list[np.ndarray] = []
    while sum(p.shape[0] for p in parts) < seconds * SAMPLE_RATE:
        for clip in ENGLISH:
            parts += [decode_audio(clip.path, max_duration_s=600), gap]
    return encode_flac(np.concatenate(parts)[: int(seconds * SAMPLE_RATE)])


async def test_long_audio_runs_in_chunks_with_progress(env_factory: Factory, tmp_path: Any) -> None:
    env: JobsEnv = await env_factory(chunk_s=30)
    path = tmp_path / "long.flac"
    path.write_bytes(_long_audio(75))
    job_id = (await env.submit(path)).json()["id"]
    done = await env.wait(job_id)
    assert done["status"] == "succeeded"
    assert done["progress"] == {"done": 3, "total": 3}
    verbose = (
        await env.client.get(f"/v1/jobs/{job_id}/result?response_format=verbose_json")
    ).json()
    ends = [s["end"] for s in verbose["segments"]]
    assert ends == sorted(ends)
    assert ends[-1] > 60  # the later chunks' times are offset into the recording
    assert verbose["duration"] == pytest.approx(75, abs=0.1)


async def test_cancel_a_queued_job_and_it_never_runs(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False)
    job_id = (await env.submit(DISTINCT[0].path)).json()["id"]
    cancelled = await env.client.delete(f"/v1/jobs/{job_id}")
    assert cancelled.json()["status"] == "cancelled"
    await env.start_runner()
    await asyncio.sleep(1.0)
    assert (await env.client.get(f"/v1/jobs/{job_id}")).json()["status"] == "cancelled"
    assert _error(await env.client.get(f"/v1/jobs/{job_id}/result"), 409)["code"] == (
        "job_not_succeeded"
    )


async def test_cancel_a_running_job_and_it_never_flips_back(
    env_factory: Factory, tmp_path: Any
) -> None:
    env: JobsEnv = await env_factory(chunk_s=30)
    path = tmp_path / "long.flac"
    path.write_bytes(_long_audio(120))
    job_id = (await env.submit(path)).json()["id"]
    for _ in range(300):
        if (await env.client.get(f"/v1/jobs/{job_id}")).json()["status"] == "running":
            break
        await asyncio.sleep(0.05)
    assert (await env.client.delete(f"/v1/jobs/{job_id}")).json()["status"] == "cancelled"
    assert env.runner is not None
    await env.runner.drain()
    final = (await env.client.get(f"/v1/jobs/{job_id}")).json()
    assert final["status"] == "cancelled"
    assert final["progress"]["done"] < 4
    assert await _results_of(env, job_id) == 0


async def test_delete_a_finished_job_deletes_its_data_idempotently(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory()
    job_id = (await env.submit(DISTINCT[1].path)).json()["id"]
    await env.wait(job_id)
    for _ in range(2):
        deleted = await env.client.delete(f"/v1/jobs/{job_id}")
        assert deleted.status_code == 200
        assert deleted.json()["status"] == "succeeded"
    assert (
        _error(await env.client.get(f"/v1/jobs/{job_id}/result"), 410)["code"] == "result_deleted"
    )
    assert len(list(env.settings.audio_dir.rglob("*"))) == _dirs(env)


async def test_retention_purges_audio_and_results(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(retention_s=0.5)
    job_id = (await env.submit(DISTINCT[2].path)).json()["id"]
    await env.wait(job_id)
    await asyncio.sleep(0.6)
    assert await env.app_runtime.jobs.purge_expired() == 1
    assert await _results_of(env, job_id) == 0
    assert (
        _error(await env.client.get(f"/v1/jobs/{job_id}/result"), 410)["code"] == "result_deleted"
    )


async def test_list_newest_first_with_cursor_and_filters(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False)
    ids = [(await env.submit(DISTINCT[i % 3].path)).json()["id"] for i in range(5)]
    await env.client.delete(f"/v1/jobs/{ids[0]}")
    first = (await env.client.get("/v1/jobs?limit=2")).json()
    assert [j["id"] for j in first["data"]] == [ids[4], ids[3]]
    second = (await env.client.get(f"/v1/jobs?limit=2&cursor={first['next_cursor']}")).json()
    assert [j["id"] for j in second["data"]] == [ids[2], ids[1]]
    last = (await env.client.get(f"/v1/jobs?limit=2&cursor={second['next_cursor']}")).json()
    assert [j["id"] for j in last["data"]] == [ids[0]]
    assert last["next_cursor"] is None
    cancelled = (await env.client.get("/v1/jobs?status=cancelled")).json()
    assert [j["id"] for j in cancelled["data"]] == [ids[0]]
    _error(await env.client.get("/v1/jobs?cursor=not-a-cursor"), 400)
    _error(await env.client.get("/v1/jobs?limit=0"), 400)
    _error(await env.client.get("/v1/jobs?status=sleeping"), 400)


async def test_unknown_and_garbage_job_ids(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False)
    for job_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid", "%00"):
        _error(await env.client.get(f"/v1/jobs/{job_id}"), 404)
        _error(await env.client.get(f"/v1/jobs/{job_id}/result"), 404)
        _error(await env.client.delete(f"/v1/jobs/{job_id}"), 404)
        _error(await env.client.get(f"/v1/jobs/{job_id}/events"), 404)


async def test_bad_fields_are_refused_like_the_sync_endpoint(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False)
    clip = DISTINCT[0]
    assert _error(await env.submit(clip.path, model="gpt-4"), 400)["code"] == "model_not_found"
    _error(await env.submit(clip.path, task="summarise"), 400)
    _error(await env.submit(clip.path, temperature="warm"), 400)
    _error(await env.client.post("/v1/jobs", data={"model": "whisper-1"}), 400)
    long_key = {"Idempotency-Key": "k" * 300}
    _error(await env.submit(clip.path, headers=long_key), 400)
    assert (await env.sql("SELECT count(*) FROM jobs"))[0][0] == 0


async def test_events_stream_the_status_changes(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False)
    job_id = (await env.submit(DISTINCT[0].path)).json()["id"]

    async def follow() -> str:
        response = await env.client.get(f"/v1/jobs/{job_id}/events", timeout=120)
        assert response.headers["content-type"].startswith("text/event-stream")
        return response.text

    events = asyncio.create_task(follow())
    await asyncio.sleep(0.3)
    await env.start_runner()
    stream = await asyncio.wait_for(events, 120)
    statuses = [
        line.split('"status":"')[1].split('"')[0]
        for line in stream.splitlines()
        if line.startswith('data: {"id"')
    ]
    assert statuses[0] == "queued"
    assert statuses[-1] == "succeeded"
    assert stream.rstrip().endswith("event: end\ndata: {}")


async def test_translate_task(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory()
    job = await env.wait((await env.submit(DISTINCT[0].path, task="translate")).json()["id"])
    assert job["task"] == "translate"
    assert job["status"] == "succeeded"


async def test_a_restarted_tracker_takes_over_leases_at_once(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False, lease_s=600)
    job_id = (await env.submit(DISTINCT[0].path)).json()["id"]
    # A first incarnation claims the job and dies without a word (no cleanup).
    crashed = env.runner_runtime.runner("test-tracker", env.transcriber)
    await crashed.start()
    async with env.runner_runtime.sessions() as session, session.begin():
        from services.core.clock import utcnow
        from services.jobs.leases import LeaseRepository

        claimed = await LeaseRepository(session).claim(
            model="tiny.en", epoch=crashed.epoch, limit=1, now=utcnow(), lease_s=600
        )
    assert [job.id for job in claimed] == [job_id]
    # Its successor does not wait for the 600 s lease: the new epoch takes it over.
    successor = await env.start_runner("test-tracker")
    assert successor.epoch == crashed.epoch + 1
    done = await env.wait(job_id)
    assert done["status"] == "succeeded"
    assert done["attempts"] == 2
    # The dead incarnation's late writes are fenced off.
    async with env.runner_runtime.sessions() as session, session.begin():
        from services.core.clock import utcnow
        from services.jobs.leases import LeaseRepository

        late = await LeaseRepository(session).succeed(
            job_id=job_id, epoch=crashed.epoch, transcript={}, duration_s=0.0, now=utcnow()
        )
    assert late is False
    assert await _results_of(env, job_id) == 1


async def test_status_is_read_through_redis_only(env_factory: Factory, backend: str) -> None:
    env: JobsEnv = await env_factory(start=False)
    job_id = (await env.submit(DISTINCT[0].path)).json()["id"]
    first = (await env.client.get(f"/v1/jobs/{job_id}")).json()
    assert first["status"] == JobStatus.QUEUED
    cached = await env.app_runtime.cache.get(f"rayscribe:job:{job_id}")
    if backend == "postgres":
        assert cached is not None
        assert job_id in cached
    else:  # a process-local cache would go stale: the tracker writes from elsewhere
        assert cached is None
