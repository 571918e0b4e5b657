"""Tenancy: a user sees only their own jobs (another's answers 404 exactly like a missing
one), idempotency keys are per user, and admin sees everyone's, including ownerless jobs."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import redis.asyncio
from sqlalchemy import text

from tests.auth.conftest import EnvFactory, bearer
from tests.conftest import DISTINCT
from tests.idp import LocalIdP
from tests.jobs.conftest import JobsEnv


async def _submit(env: JobsEnv, token: str, clip: int = 0, **headers: str) -> httpx.Response:
    return await env.submit(DISTINCT[clip].path, headers={**bearer(token), **headers})


async def _finished(env: JobsEnv, job_id: str, token: str) -> dict[str, Any]:
    for _ in range(600):
        body: dict[str, Any] = (
            await env.client.get(f"/v1/jobs/{job_id}", headers=bearer(token))
        ).json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        await asyncio.sleep(0.1)
    raise TimeoutError(job_id)


async def _make_ownerless(env: JobsEnv, job_id: str) -> None:
    async with env.app_runtime.sessions() as session, session.begin():
        await session.execute(text("UPDATE jobs SET owner = NULL WHERE id = :id"), {"id": job_id})
    assert env.settings.redis.url is not None
    client = redis.asyncio.Redis.from_url(env.settings.redis.url.get_secret_value())
    await client.flushdb()  # the cached status still names the old owner
    await client.aclose()


def _masked(response: httpx.Response, job_id: str) -> tuple[int, str]:
    return response.status_code, response.text.replace(job_id, "<id>")


async def test_a_user_cannot_touch_another_users_job(auth_env: EnvFactory, idp: LocalIdP) -> None:
    env = await auth_env()
    await env.start_runner()
    alice, bob = idp.token(sub="alice"), idp.token(sub="bob")
    submitted = await _submit(env, bob)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert (await _finished(env, job_id, bob))["status"] == "succeeded"
    rows = await env.sql("SELECT owner FROM jobs WHERE id = :id", id=job_id)
    assert rows[0][0] == f"{idp.issuer}#bob"

    missing = str(uuid.uuid4())
    as_alice = bearer(alice)
    for method, suffix in [
        ("GET", ""),
        ("GET", "/result"),
        ("GET", "/events"),
        ("DELETE", ""),
    ]:
        theirs = await env.client.request(method, f"/v1/jobs/{job_id}{suffix}", headers=as_alice)
        absent = await env.client.request(method, f"/v1/jobs/{missing}{suffix}", headers=as_alice)
        assert theirs.status_code == 404, (method, suffix, theirs.text)
        assert _masked(theirs, job_id) == _masked(absent, missing), (method, suffix)
    listed = (await env.client.get("/v1/jobs", headers=as_alice)).json()
    assert listed["data"] == []

    # Bob's job is untouched by Alice's DELETE, and Bob still reads, fetches and streams it.
    as_bob = bearer(bob)
    assert (await env.client.get(f"/v1/jobs/{job_id}/result", headers=as_bob)).status_code == 200
    async with env.client.stream("GET", f"/v1/jobs/{job_id}/events", headers=as_bob) as events:
        assert events.status_code == 200
        text = "".join([chunk async for chunk in events.aiter_text()])
    assert "event: status" in text
    assert "event: end" in text
    listed = (await env.client.get("/v1/jobs", headers=as_bob)).json()
    assert [job["id"] for job in listed["data"]] == [job_id]


async def test_idempotency_keys_are_per_user(auth_env: EnvFactory, idp: LocalIdP) -> None:
    env = await auth_env()
    alice, bob = idp.token(sub="alice"), idp.token(sub="bob")
    first = await _submit(env, alice, 0, **{"Idempotency-Key": "same-key"})
    other = await _submit(env, bob, 1, **{"Idempotency-Key": "same-key"})
    assert (first.status_code, other.status_code) == (202, 202), other.text
    assert first.json()["id"] != other.json()["id"]
    assert "idempotent-replayed" not in other.headers
    again = await _submit(env, alice, 0, **{"Idempotency-Key": "same-key"})
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    # Bob replaying his key with his audio gets his job, never Alice's.
    bob_again = await _submit(env, bob, 1, **{"Idempotency-Key": "same-key"})
    assert bob_again.json()["id"] == other.json()["id"]


async def test_admin_sees_everyone_including_jobs_without_owner(
    auth_env: EnvFactory, idp: LocalIdP
) -> None:
    env = await auth_env()
    alice, bob = idp.token(sub="alice"), idp.token(sub="bob")
    admin = idp.token(sub="root", client_roles=("admin",))
    ids = [(await _submit(env, token)).json()["id"] for token in (alice, bob, alice)]
    await _make_ownerless(env, ids[2])  # as if submitted before authentication was on

    listed = (await env.client.get("/v1/jobs", headers=bearer(admin))).json()
    assert sorted(job["id"] for job in listed["data"]) == sorted(ids)
    for job_id in ids:
        got = await env.client.get(f"/v1/jobs/{job_id}", headers=bearer(admin))
        assert got.status_code == 200
    mine = (await env.client.get("/v1/jobs", headers=bearer(alice))).json()
    assert [job["id"] for job in mine["data"]] == [ids[0]]  # not the ownerless one
    ownerless = await env.client.get(f"/v1/jobs/{ids[2]}", headers=bearer(alice))
    assert ownerless.status_code == 404
    cancelled = await env.client.delete(f"/v1/jobs/{ids[1]}", headers=bearer(admin))
    assert cancelled.json()["status"] == "cancelled"
