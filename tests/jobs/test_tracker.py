"""The job tracker's correctness: global fencing, interruptions, unserved models, a dying loop.

Like the rest of this tier, on PostgreSQL + Redis and on SQLite alone. Fakes stand only
behind the `Transcriber` protocol: one that records which lease each chunk was computed
under, one that is overloaded a number of times before it works.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import text

from cluster.job_tracker import TrackerCore
from services.core.clock import utcnow
from services.core.errors import OverloadedError, UnavailableError
from services.core.settings import Settings
from services.jobs.leases import LeaseRepository
from services.jobs.runner import JobRunner
from services.migrations import upgrade as migrate
from services.transcription.domain import Segment, Transcript, TranscriptionOptions, Waveform
from services.transcription.local import LocalTranscriber
from tests.conftest import DISTINCT, report, word_error_rate
from tests.jobs.conftest import JobsEnv

Factory = Callable[..., Any]


async def execute(env: JobsEnv, statement: str, **params: Any) -> None:
    """A committed write, for setting up states the API cannot reach."""
    async with env.app_runtime.sessions() as session, session.begin():
        await session.execute(text(statement), params)


async def submit_all(env: JobsEnv, count: int) -> list[str]:
    responses = [await env.submit(DISTINCT[i % len(DISTINCT)].path) for i in range(count)]
    assert all(r.status_code == 202 for r in responses)
    return [r.json()["id"] for r in responses]


async def wait_all(env: JobsEnv, ids: list[str], timeout_s: float = 60) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(env.wait(job_id, timeout_s) for job_id in ids)))


# -- fencing ---------------------------------------------------------------------------


async def test_a_lease_is_taken_over_at_once_by_its_own_tracker_only(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False)
    (job_id,) = await submit_all(env, 1)
    now = utcnow()
    async with env.runner_runtime.sessions() as session, session.begin():
        repo = LeaseRepository(session)
        blue = await repo.start_incarnation(name="blue", model="tiny.en", now=now)
        green = await repo.start_incarnation(name="green", model="tiny.en", now=now)
        assert blue != green  # tokens are global, not per tracker name
        (job,) = await repo.claim(model="tiny.en", epoch=blue, limit=1, now=now, lease_s=600)
        assert (job.lease_epoch, job.lease_owner) == (blue, "blue")
        # Another live tracker leaves an unexpired lease alone...
        assert await repo.requeue_lost(name="green", token=green, now=now) == []
        # ...but the next incarnation of the same tracker takes it over at once.
        blue_again = await repo.start_incarnation(name="blue", model="tiny.en", now=now)
        assert await repo.requeue_lost(name="blue", token=blue_again, now=now) == [job_id]
        # The older incarnation cannot take a newer one's lease.
        (job,) = await repo.claim(model="tiny.en", epoch=blue_again, limit=1, now=now, lease_s=5)
        assert await repo.requeue_lost(name="blue", token=blue, now=now) == []
        # Any tracker takes an expired lease over, and the stale holder is fenced off.
        later = now + timedelta(seconds=6)
        assert await repo.requeue_lost(name="green", token=green, now=later) == [job_id]
        assert not await repo.progress(
            job_id=job_id, epoch=blue_again, done=1, total=1, duration_s=1.0
        )


@dataclass
class LeaseRecorder:
    """A fake model that tags each chunk with (job, lease token) and checks the lease.

    `held` holds the (job, token) pairs computed while the job's lease was held by that
    token both when the chunk started and when it was done; `unheld` the others.
    """

    env: JobsEnv
    delay_s: float = 0.3
    runner: JobRunner | None = None
    held: set[tuple[str, int]] = field(default_factory=set)
    unheld: set[tuple[str, int]] = field(default_factory=set)
    busy: int = 0
    """Chunks being computed right now."""

    async def _holder(self, job_id: str) -> int | None:
        rows = await self.env.sql(
            "SELECT lease_epoch FROM jobs WHERE id = :id AND status = 'running'", id=job_id
        )
        return rows[0][0] if rows else None

    async def transcribe(
        self, audio: Waveform, options: TranscriptionOptions, *, background: bool = False
    ) -> Transcript:
        assert self.runner is not None
        job_id = structlog.contextvars.get_contextvars()["job_id"]
        token = self.runner.epoch
        before = await self._holder(job_id)
        self.busy += 1
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.busy -= 1
        after = await self._holder(job_id)
        (self.held if before == after == token else self.unheld).add((job_id, token))
        tag = f"{job_id}|{token}"
        duration = audio.shape[0] / 16000
        segment = Segment(0, 0, 0.0, duration, tag, [], 0.0, 0.0, 1.0, 0.0)
        return Transcript(tag, "en", 1.0, duration, [segment])

    async def ready(self) -> bool:
        return True


async def test_two_trackers_share_a_database_without_stealing(env_factory: Factory) -> None:
    """A rolling deploy: green starts while blue runs, then blue dies without a word."""
    env: JobsEnv = await env_factory(start=False, lease_s=3, max_concurrent=2)
    async with asyncio.timeout(90):
        await _rolling_deploy(env)


async def _rolling_deploy(env: JobsEnv) -> None:
    ids = await submit_all(env, 24)
    wakes = {"blue": asyncio.Event(), "green": asyncio.Event()}
    recorders: dict[str, LeaseRecorder] = {}
    tasks: dict[str, asyncio.Task[None]] = {}
    runners: dict[str, JobRunner] = {}
    for name in ("blue", "green"):
        recorders[name] = LeaseRecorder(env)
        runner = env.runner_runtime.runner(name, recorders[name])
        recorders[name].runner = runners[name] = runner
        await runner.start()
        tasks[name] = asyncio.create_task(runner.run_forever(wakes[name]))
        await asyncio.sleep(0.3)
    try:
        for _ in range(500):  # until blue is computing a chunk
            if recorders["blue"].busy:
                break
            await asyncio.sleep(0.01)
        tasks["blue"].cancel()  # killed: its leases stay until they expire
        with contextlib.suppress(asyncio.CancelledError):
            await tasks["blue"]
        orphans = await env.sql(
            "SELECT id, lease_expires_at FROM jobs "
            "WHERE status = 'running' AND lease_owner = 'blue'"
        )
        assert orphans, "blue died holding no job"
        # Green leaves blue's leases alone until they expire.
        first_expiry = min(_when(expires_at) for _, expires_at in orphans)
        await asyncio.sleep(max(0.0, (first_expiry - utcnow()).total_seconds() - 0.5))
        held_by_blue = await env.sql(
            "SELECT count(*) FROM jobs WHERE status = 'running' AND lease_epoch = :blue",
            blue=runners["blue"].epoch,
        )
        assert held_by_blue[0][0] == len(orphans), "green took a lease before it expired"
        finished = await wait_all(env, ids)
    finally:
        for task in tasks.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    statuses = [f["status"] for f in finished]
    assert statuses == ["succeeded"] * len(ids), [f["error"] for f in finished]
    results = await env.sql("SELECT job_id, transcript FROM job_results")
    chunks = await env.sql("SELECT job_id, transcript FROM job_chunks")
    assert sorted(job_id for job_id, _ in results) == sorted(ids), "one result per job"
    held = recorders["blue"].held | recorders["green"].held
    unheld = recorders["blue"].unheld | recorders["green"].unheld
    stored = [(job_id, _tag(t)) for job_id, t in [*results, *chunks]]
    for job_id, (tagged_job, token) in stored:
        assert tagged_job == job_id
        assert (job_id, token) in held, "a chunk computed under a lease it did not hold"
    tokens = {token for _, (_, token) in stored}
    # Blue may die before it stores anything (it is killed while computing its first
    # chunk); whatever was stored was stored by one of the two, under a lease it held.
    assert runners["green"].epoch in tokens
    assert tokens <= {runners["blue"].epoch, runners["green"].epoch}
    takeovers = sum(1 for f in finished if f["attempts"] == 2)
    report(
        f"two trackers ({env.backend}): {len(ids)} jobs, {len(results)} results, "
        f"{len(results) - len({job_id for job_id, _ in results})} duplicate results, "
        f"{statuses.count('failed')} failed, {takeovers} of {len(orphans)} orphans taken over "
        "after expiry, "
        f"{len(unheld)} chunks computed without the lease (none stored)"
    )


def _when(value: Any) -> datetime:
    """SQLite returns raw timestamps as text."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _tag(transcript: Any) -> tuple[str, int]:
    if isinstance(transcript, str):  # JSON columns come back as text through raw SQL
        import json

        transcript = json.loads(transcript)
    job_id, token = transcript["text"].strip().split("|")
    return job_id, int(token)


# -- interruptions ---------------------------------------------------------------------


@dataclass
class Overloaded:
    """The model's queue is full `times` times (and a replica restarts), then it works."""

    model: LocalTranscriber
    times: int
    calls: int = 0

    async def transcribe(
        self, audio: Waveform, options: TranscriptionOptions, *, background: bool = False
    ) -> Transcript:
        self.calls += 1
        if self.calls <= self.times:
            if self.calls % 3 == 0:
                raise UnavailableError("The transcription replica stopped; retry it.")
            raise OverloadedError("The transcription service is at capacity; retry shortly.")
        return await self.model.transcribe(audio, options, background=background)

    async def ready(self) -> bool:
        return True


async def test_overload_does_not_use_up_attempts(
    env_factory: Factory, local_transcriber: LocalTranscriber
) -> None:
    env: JobsEnv = await env_factory(start=False, max_attempts=3, interruption_backoff_max_s=0.2)
    times = 7  # more than max_attempts
    env.transcriber = Overloaded(local_transcriber, times)
    clip = DISTINCT[0]
    job_id = (await env.submit(clip.path)).json()["id"]
    await env.start_runner()
    done = await env.wait(job_id, timeout_s=60)
    assert done["status"] == "succeeded", done["error"]
    assert (done["attempts"], done["interruptions"]) == (1, times)
    assert done["error"] is None
    text_ = (await env.client.get(f"/v1/jobs/{job_id}/result")).json()["text"]
    assert word_error_rate(clip.text, text_) < 0.3
    report(
        f"interruptions ({env.backend}): {times} overloads/restarts -> "
        f"attempts {done['attempts']}, interruptions {done['interruptions']}"
    )


# -- models nobody serves ----------------------------------------------------------------


async def test_jobs_of_a_model_nobody_serves_fail_after_the_grace(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False, model_grace_s=1.0)
    ghost_queued, ghost_running, served_elsewhere, ours = await submit_all(env, 4)
    now = utcnow()
    await execute(env, "UPDATE jobs SET model = 'ghost' WHERE id = :id", id=ghost_queued)
    await execute(  # its tracker died holding it; nobody serves the model any more
        env,
        "UPDATE jobs SET model = 'ghost', status = 'running', attempts = 1, lease_epoch = 999999,"
        " lease_owner = 'gone', lease_expires_at = :past WHERE id = :id",
        id=ghost_running,
        past=now - timedelta(minutes=1),
    )
    await execute(env, "UPDATE jobs SET model = 'small' WHERE id = :id", id=served_elsewhere)
    await execute(
        env,
        "INSERT INTO tracker_incarnations (name, model, started_at, heartbeat_at) "
        "VALUES ('small-tracker', 'small', :now, :future)",
        now=now,
        future=now + timedelta(hours=1),
    )
    await env.start_runner()
    started = time.monotonic()
    failed = await wait_all(env, [ghost_queued, ghost_running], timeout_s=15)
    waited_s = time.monotonic() - started
    for job in failed:
        assert (job["status"], job["error_code"]) == ("failed", "model_not_served")
        assert "ghost" in job["error"]
    assert (await env.wait(ours))["status"] == "succeeded"  # its own model: never unserved
    await asyncio.sleep(1.5)
    rows = await env.sql("SELECT status FROM jobs WHERE id = :id", id=served_elsewhere)
    assert rows[0][0] == "queued", "a model another live tracker serves waits for it"
    report(f"model_not_served ({env.backend}): grace 1 s, failed after {waited_s:.1f} s")


# -- the tracker (the Serve deployment's body, without Ray) ------------------------------


async def _eventually(condition: Callable[[], Any], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.05)


def _tracker_settings(tmp_path: Path, database: str | None) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path,
        database={"url": database, "connect_timeout_s": 0.5},
        cache={"enabled": False},
        jobs={"poll_interval_s": 0.1},
    )


async def test_a_tracker_that_cannot_start_keeps_trying_and_says_so(
    tmp_path: Path, local_transcriber: LocalTranscriber
) -> None:
    settings = _tracker_settings(tmp_path, "postgresql+asyncpg://postgres@127.0.0.1:9/none")
    tracker = TrackerCore(settings, local_transcriber, name="t")
    try:

        async def failed() -> bool:
            return (await tracker.status())["error"] is not None

        await _eventually(failed)
        await asyncio.sleep(0.5)  # several attempts
        status = await tracker.status()
        assert status["started"] is False
        assert status["loop_alive"] is True
        assert "127.0.0.1" not in status["error"]
        await tracker.check_health()  # a database outage is no reason for Serve to restart it
    finally:
        await tracker.shutdown()


async def test_a_tracker_whose_loop_dies_fails_its_health_check(
    tmp_path: Path, local_transcriber: LocalTranscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serve replaces a replica whose `check_health` raises (3 failures in a row)."""
    settings = _tracker_settings(tmp_path, None)
    await asyncio.to_thread(migrate, settings.database_url)

    async def broken_loop(self: JobRunner, wake: asyncio.Event) -> None:
        await asyncio.sleep(0.3)
        raise RuntimeError("a bug in the loop at /work/services/jobs/runner.py")

    monkeypatch.setattr(JobRunner, "run_forever", broken_loop)
    tracker = TrackerCore(settings, local_transcriber, name="t")
    try:

        async def started() -> bool:
            return bool((await tracker.status())["started"])

        await _eventually(started)
        assert (await tracker.status())["loop_alive"] is True
        assert (await tracker.status())["epoch"] >= 1
        await tracker.check_health()

        async def died() -> bool:
            return not (await tracker.status())["loop_alive"]

        await _eventually(died, timeout_s=10)
        with pytest.raises(RuntimeError, match="loop died"):
            await tracker.check_health()
        assert "/work" not in (await tracker.status())["error"]
    finally:
        await tracker.shutdown()


@dataclass
class Slow:
    """The real model behind a delay, so that jobs are still running when the test acts."""

    model: LocalTranscriber
    delay_s: float = 1.0

    async def transcribe(
        self, audio: Waveform, options: TranscriptionOptions, *, background: bool = False
    ) -> Transcript:
        await asyncio.sleep(self.delay_s)
        return await self.model.transcribe(audio, options, background=background)

    async def ready(self) -> bool:
        return True


@pytest.mark.skip(
    reason="open defect, Nov 28: the old tracker's stop sometimes did not cancel a running job "
    "(it succeeded there: 1 of 2 CI checks, on PostgreSQL), and runs with output captured "
    "then hung past 150 s, which would leave a tracker polling the shared database for the "
    "rest of the session; to be found and fixed before this test runs again"
)
async def test_a_graceful_stop_hands_running_jobs_to_the_next_tracker_at_once(
    env_factory: Factory, local_transcriber: LocalTranscriber
) -> None:
    """A redeploy: the old replica's `shutdown` requeues its jobs, attempts kept, and a new
    tracker claims them within a poll, not after the 60 s lease."""
    env: JobsEnv = await env_factory(start=False, lease_s=60, max_concurrent=2)
    ids = await submit_all(env, 2)
    # Longer than the test: a job that finishes in the old tracker means its stop did not
    # cancel it (the open defect above).
    old = TrackerCore(env.settings, Slow(local_transcriber, delay_s=30), name="old")
    started = time.monotonic()
    try:

        async def all_running() -> bool:
            rows = await env.sql("SELECT count(*) FROM jobs WHERE status = 'running'")
            return bool(rows[0][0] == len(ids))

        await _eventually(all_running)
        running_after_s = time.monotonic() - started
        await old.shutdown()
        stopped_after_s = time.monotonic() - started - running_after_s
    finally:
        await old.shutdown()
    rows = await env.sql("SELECT status, lease_epoch, lease_expires_at, attempts FROM jobs")
    assert sorted(rows) == [("queued", None, None, 0)] * len(ids), rows
    stopped = await env.sql("SELECT stopped_at FROM tracker_incarnations WHERE name = 'old'")
    assert stopped[0][0] is not None
    released_at = time.monotonic()
    env.transcriber = local_transcriber
    new = await env.start_runner("new")

    async def taken() -> bool:
        rows = await env.sql(
            "SELECT count(*) FROM jobs WHERE status != 'queued' AND "
            "(lease_epoch = :epoch OR status = 'succeeded')",
            epoch=new.epoch,
        )
        return bool(rows[0][0] == len(ids))

    await _eventually(taken, timeout_s=10)
    taken_after_s = time.monotonic() - released_at
    finished = await wait_all(env, ids)
    assert [f["status"] for f in finished] == ["succeeded"] * len(ids)
    assert [f["attempts"] for f in finished] == [1] * len(ids), "the stop used up an attempt"
    results = await env.sql("SELECT count(*) FROM job_results")
    assert results[0][0] == len(ids)
    report(
        f"graceful stop ({env.backend}): {len(ids)} running jobs requeued (lease cleared, "
        f"attempts kept), claimed by the next tracker after {taken_after_s:.2f} s (lease 60 s); "
        f"both running after {running_after_s:.1f} s, the stop took {stopped_after_s:.1f} s"
    )
