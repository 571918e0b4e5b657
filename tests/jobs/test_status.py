"""Job status and the jobs API at their edges: the declared-duration cap, the versioned
status cache, DELETE decided from the row, a full connection pool, cursors from any zone."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from services.core.cache import Cache, MemoryCache, RedisCache, create_cache
from services.core.clock import utcnow
from services.core.settings import RedisSettings
from services.jobs.leases import LeaseRepository
from services.jobs.tables import JobStatus
from services.jobs.views import JobView
from tests.conftest import DISTINCT, TWO_HOURS
from tests.jobs.conftest import JobsEnv, build_env, close_env, make_settings

Factory = Callable[..., Any]
STATUS_KEY = "rayscribe:job:{}"


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _understating(tmp_path: Path) -> Path:
    """Two hours of silence whose FLAC header claims one second (a lying header)."""
    data = bytearray(TWO_HOURS.read_bytes())
    field = int.from_bytes(data[18:26], "big")  # STREAMINFO: rate, channels, bits, samples
    data[18:26] = ((field & ~((1 << 36) - 1)) | 8000).to_bytes(8, "big")
    path = tmp_path / "lying.flac"
    path.write_bytes(bytes(data))
    return path


# -- 1. the declared duration is checked at submission ----------------------------------


async def test_declared_duration_over_the_cap_is_413_at_once(
    env_factory: Factory, tmp_path: Path
) -> None:
    env: JobsEnv = await env_factory(max_duration_s=60, chunk_s=30)
    error = _error(await env.submit(TWO_HOURS), 413)  # declares 7200 s
    assert error["code"] == "audio_too_long"
    assert error["param"] == "file"
    assert await env.sql("SELECT id FROM jobs") == []
    assert not list(env.settings.audio_dir.rglob("*.bin")), "a refused upload left audio"
    # A header that understates passes the check; the decode-time cap still stops it.
    lying = await env.submit(_understating(tmp_path))
    assert lying.status_code == 202, lying.text
    done = await env.wait(lying.json()["id"])
    assert done["status"] == "failed"
    assert "longer than" in done["error"]


# -- 2. the status cache never goes back in time -----------------------------------------


@pytest.fixture(params=["redis", "memory"])
async def cache(request: pytest.FixtureRequest, shared_redis: str) -> Any:
    if request.param == "memory":
        yield MemoryCache()
        return
    made = create_cache(RedisSettings(url=shared_redis))
    assert isinstance(made, RedisCache)
    yield made
    await made.close()


async def test_set_if_newer_never_replaces_a_newer_version(cache: Cache) -> None:
    key = "rayscribe:test:set-if-newer"
    await cache.delete(key)
    assert await cache.set_if_newer(key, '{"version": 2, "s": "new"}', 2, 30)
    assert not await cache.set_if_newer(key, '{"version": 1, "s": "old"}', 1, 30)
    assert await cache.get(key) == '{"version": 2, "s": "new"}'
    assert await cache.set_if_newer(key, '{"version": 3, "s": "newer"}', 3, 30)
    assert await cache.get(key) == '{"version": 3, "s": "newer"}'
    await cache.set(key, "not json", 30)  # an unreadable entry is replaced, never kept
    assert await cache.set_if_newer(key, '{"version": 0}', 0, 30)
    await cache.delete(key)


@pytest.mark.parametrize("backend", ["postgres"])  # the status cache exists only with Redis
async def test_a_stale_view_written_late_does_not_replace_a_newer_one(
    env_factory: Factory,
) -> None:
    env: JobsEnv = await env_factory(start=False)
    job_id = (await env.submit(DISTINCT[0].path)).json()["id"]
    queued = await env.app_runtime.jobs.get_fresh(job_id)
    cancelled = (await env.client.delete(f"/v1/jobs/{job_id}")).json()
    assert cancelled["version"] > queued.version
    # A slow writer that read the row before the cancel publishes its view afterwards.
    await env.runner_runtime.jobs.changed(queued)
    assert (await env.client.get(f"/v1/jobs/{job_id}")).json()["status"] == "cancelled"
    # The read-through path is guarded the same way.
    await env.app_runtime.cache.delete(STATUS_KEY.format(job_id))
    await env.app_runtime.cache.set_if_newer(
        STATUS_KEY.format(job_id), JobView(**cancelled).model_dump_json(), cancelled["version"], 30
    )
    assert (await env.client.get(f"/v1/jobs/{job_id}")).json()["status"] == "cancelled"


@pytest.mark.parametrize("backend", ["postgres"])
async def test_after_a_bulk_requeue_the_cached_status_is_queued(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False, lease_s=600)
    job_id = (await env.submit(DISTINCT[0].path)).json()["id"]
    runtime = env.runner_runtime
    async with runtime.sessions() as session, session.begin():
        repo = LeaseRepository(session)
        epoch = await repo.start_incarnation(name="crashed", model="tiny.en", now=utcnow())
        (claimed,) = await repo.claim(
            model="tiny.en", epoch=epoch, limit=1, now=utcnow(), lease_s=600
        )
    await runtime.jobs.changed(JobView.of(claimed))
    assert (await env.client.get(f"/v1/jobs/{job_id}")).json()["status"] == "running"
    # A successor takes the lease over in bulk; its requeue refreshes the status cache.
    async with runtime.sessions() as session, session.begin():
        repo = LeaseRepository(session)
        successor = await repo.start_incarnation(name="crashed", model="tiny.en", now=utcnow())
        await repo.requeue_lost(name="crashed", token=successor, now=utcnow())
    await runtime.jobs.refresh([job_id])
    seen = (await env.client.get(f"/v1/jobs/{job_id}")).json()
    assert seen["status"] == "queued"
    assert seen["version"] == (await runtime.jobs.get_fresh(job_id)).version


# -- 3. DELETE decides from the row ----------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgres"])
async def test_delete_cancels_a_queued_job_whatever_the_cache_says(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False)
    job_id = (await env.submit(DISTINCT[0].path)).json()["id"]
    row = await env.app_runtime.jobs.get_fresh(job_id)
    poisoned = row.model_copy(update={"status": JobStatus.SUCCEEDED})
    await env.app_runtime.cache.set(STATUS_KEY.format(job_id), poisoned.model_dump_json(), 30)
    assert (await env.client.get(f"/v1/jobs/{job_id}")).json()["status"] == "succeeded"

    deleted = await env.client.delete(f"/v1/jobs/{job_id}")
    assert deleted.status_code == 200
    assert deleted.json()["status"] == "cancelled"
    (stored,) = await env.sql(
        "SELECT status, result_deleted, audio_key FROM jobs WHERE id = :id", id=job_id
    )
    assert stored[0] == "cancelled"
    assert not stored[1], "a cancel must not erase"
    assert stored[2] is not None
    assert (await env.client.get(f"/v1/jobs/{job_id}")).json()["status"] == "cancelled"
    _error(await env.client.delete("/v1/jobs/00000000-0000-0000-0000-000000000000"), 404)
    _error(await env.client.delete("/v1/jobs/not-a-uuid"), 404)


# -- 4. a full connection pool is 503, not 500 -----------------------------------------------


@pytest.mark.parametrize("backend", ["postgres"])  # SQLite has no server connections to run out of
async def test_a_full_connection_pool_answers_503_with_retry_after(
    env_factory: Factory, tmp_path: Path, shared_postgres: str, shared_redis: str
) -> None:
    clean: JobsEnv = await env_factory(start=False)  # a clean database
    base = make_settings(tmp_path, "postgres", shared_postgres, shared_redis)
    settings = base.model_copy(
        update={
            "database": base.database.model_copy(update={"pool_size": 1, "connect_timeout_s": 0.5})
        }
    )
    env = await build_env(settings, clean.transcriber, "postgres")
    try:
        async with env.app_runtime.engine.connect() as held:
            await held.execute(text("SELECT 1"))  # the pool's only connection
            for response in (
                await env.client.get("/v1/jobs"),
                await env.submit(DISTINCT[0].path),
            ):
                error = _error(response, 503)
                assert error["code"] == "overloaded"
                assert error["type"] == "server_error"
                assert int(response.headers["retry-after"]) > 0
        assert not list(settings.audio_dir.rglob("*.bin")), "a refused upload left audio"
        assert (await env.client.get("/v1/jobs")).status_code == 200
    finally:
        await close_env(env)


# -- 5. cursors from any time zone ---------------------------------------------------------------


def _raw_cursor(moment: str, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{moment}|{job_id}".encode()).decode().rstrip("=")


def _cursor(moment: datetime, job_id: str) -> str:
    return _raw_cursor(moment.isoformat(), job_id)


def _parts(cursor: str) -> tuple[datetime, str]:
    padded = cursor + "=" * (-len(cursor) % 4)
    moment, job_id = base64.urlsafe_b64decode(padded).decode().split("|", 1)
    return datetime.fromisoformat(moment), job_id


async def test_a_cursor_with_an_offset_pages_like_the_original(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False)
    ids = [(await env.submit(DISTINCT[i].path)).json()["id"] for i in range(3)]
    first = (await env.client.get("/v1/jobs?limit=1")).json()
    assert [j["id"] for j in first["data"]] == [ids[2]]
    moment, last_id = _parts(first["next_cursor"])
    assert moment.tzinfo is None  # stored and handed out as naive UTC
    utc = moment.replace(tzinfo=UTC)
    variants = {
        "original": first["next_cursor"],
        "+05:30": _cursor(utc.astimezone(timezone(timedelta(hours=5, minutes=30))), last_id),
        "-08:00": _cursor(utc.astimezone(timezone(timedelta(hours=-8))), last_id),
        "Z": _raw_cursor(utc.isoformat().replace("+00:00", "Z"), last_id),
    }
    for name, cursor in variants.items():
        page = await env.client.get("/v1/jobs", params={"limit": 5, "cursor": cursor})
        assert page.status_code == 200, (name, page.text)
        assert [j["id"] for j in page.json()["data"]] == [ids[1], ids[0]], name


async def test_garbage_cursors_are_400(env_factory: Factory) -> None:
    env: JobsEnv = await env_factory(start=False)
    garbage = [
        "",
        "!!!",
        "not-a-cursor",
        base64.urlsafe_b64encode(b"no separator").decode(),
        base64.urlsafe_b64encode(b"yesterday|abc").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe|\x00").decode(),
        base64.urlsafe_b64encode(b"2026-11-27T10:00:00|").decode(),
        _cursor(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))), "x"),  # overflows
        "é" * 8,
    ]
    for cursor in garbage:
        error = _error(await env.client.get("/v1/jobs", params={"cursor": cursor}), 400)
        assert error["param"] == "cursor", cursor
