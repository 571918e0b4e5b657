"""Job event streams through the real FastAPI app (in-process, SQLite, no Ray, no runner).

Jobs stay `queued` (nothing runs them), so a stream stays open until its lifetime ends,
the client goes away, or the job is cancelled: every way a stream can end is driven here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from deployments.dependencies import build_ingress_resources
from deployments.fastapi_app import create_app
from services.core.settings import Settings
from services.jobs.streams import StreamLimiter
from services.migrations import upgrade as migrate
from services.resources import build_resources
from services.transcription.engine import WhisperEngine
from services.transcription.local import LocalTranscriber
from tests.conftest import DISTINCT

AppFactory = Callable[..., FastAPI]

pytestmark = pytest.mark.timeout(60)  # a stream that never ends must fail, not hang


@pytest.fixture(scope="module")
def make_app(settings: Settings, tiny_engine: WhisperEngine) -> AppFactory:
    migrate(settings.database_url)

    def make(**server: Any) -> FastAPI:
        defaults = {"sse_keepalive_s": 0.2, "sse_max_lifetime_s": 1.0}
        tuned = settings.model_copy(
            update={"server": settings.server.model_copy(update={**defaults, **server})}
        )
        runtime = build_resources(tuned, nudge=lambda: None)
        return create_app(build_ingress_resources(runtime, LocalTranscriber(tiny_engine)))

    return make


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def _submit(client: httpx.AsyncClient) -> str:
    clip = DISTINCT[0]
    response = await client.post(
        "/v1/jobs", files={"file": (clip.name, clip.path.read_bytes())}, data={"model": "whisper-1"}
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def _events(text: str) -> list[dict[str, str]]:
    """The stream's events as field -> value (comments under ':')."""
    events = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(":")
            fields[name or ":"] = value.removeprefix(" ")
        events.append(fields)
    return events


def _limiter(app: FastAPI) -> StreamLimiter:
    limiter: StreamLimiter = app.state.streams
    return limiter


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - the condition is a counter, not an event
            await asyncio.sleep(0.01)


async def test_events_carry_version_ids_pings_and_a_reconnect_at_lifetime(
    make_app: AppFactory,
) -> None:
    app = make_app()
    async with _client(app) as client:
        job_id = await _submit(client)
        response = await client.get(f"/v1/jobs/{job_id}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    status, *middle, last = events
    assert status["event"] == "status"
    assert status["id"] == str(await _version(app, job_id))
    assert '"status":"queued"' in status["data"]
    assert middle
    assert all(e == {":": "keep-alive"} for e in middle)
    assert last["event"] == "reconnect"
    assert last["id"] == status["id"]
    assert int(last["retry"]) > 0
    assert '"reason": "max_lifetime"' in last["data"]
    assert _limiter(app).open_streams == 0


async def _version(app: FastAPI, job_id: str) -> int:
    async with _client(app) as client:
        version: int = (await client.get(f"/v1/jobs/{job_id}")).json()["version"]
    return version


async def test_last_event_id_skips_what_the_client_already_has(make_app: AppFactory) -> None:
    app = make_app()
    async with _client(app) as client:
        job_id = await _submit(client)
        version = await _version(app, job_id)
        again = await client.get(
            f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(version)}
        )
        await client.delete(f"/v1/jobs/{job_id}")  # a change: the version moves on
        newer = await _version(app, job_id)
        missed = await client.get(
            f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(version)}
        )
        seen = await client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(newer)})
    assert newer > version
    assert not [e for e in _events(again.text) if e.get("event") == "status"]
    assert _events(again.text)[-1]["event"] == "reconnect"
    assert _events(again.text)[-1]["id"] == str(version)
    assert [e["id"] for e in _events(missed.text) if e.get("event") == "status"] == [str(newer)]
    assert [e.get("event") for e in _events(seen.text)] == ["end"]


async def test_a_finished_job_streams_its_last_state_then_end(make_app: AppFactory) -> None:
    app = make_app(sse_max_lifetime_s=30)  # without Redis, changes are polled every second
    async with _client(app) as client:
        job_id = await _submit(client)
        follow = asyncio.create_task(client.get(f"/v1/jobs/{job_id}/events"))
        await _until(lambda: _limiter(app).open_streams == 1)
        assert (await client.delete(f"/v1/jobs/{job_id}")).json()["status"] == "cancelled"
        response = await follow
        replay = await client.get(f"/v1/jobs/{job_id}/events")
    statuses = [e for e in _events(response.text) if e.get("event") == "status"]
    assert '"status":"cancelled"' in statuses[-1]["data"]
    assert [int(e["id"]) for e in statuses] == sorted({int(e["id"]) for e in statuses})
    assert response.text.rstrip().endswith("event: end\ndata: {}")
    assert [e.get("event") for e in _events(replay.text)] == ["status", "end"]
    assert _limiter(app).open_streams == 0


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "9" * 40, "٣"])
async def test_bad_last_event_id_is_400(make_app: AppFactory, value: str) -> None:
    app = make_app()
    async with _client(app) as client:
        job_id = await _submit(client)
        response = await client.get(
            f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": value.encode()}
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Last-Event-ID"
    assert _limiter(app).open_streams == 0


async def test_unknown_job_is_404_and_takes_no_slot(make_app: AppFactory) -> None:
    app = make_app()
    async with _client(app) as client:
        response = await client.get("/v1/jobs/nope/events")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"
    assert _limiter(app).open_streams == 0


async def _hold(
    app: FastAPI, client: httpx.AsyncClient, paths: list[str], **headers: str
) -> list[asyncio.Task[httpx.Response]]:
    before = _limiter(app).open_streams
    tasks = [asyncio.create_task(client.get(path, headers=headers)) for path in paths]
    await _until(lambda: _limiter(app).open_streams == before + len(paths))
    return tasks


def _assert_too_many(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) > 0
    error = response.json()["error"]
    assert error["code"] == "too_many_streams"
    assert error["type"] == "rate_limit_error"
    assert set(error) == {"message", "type", "param", "code"}


async def test_per_job_cap_is_429_and_slots_come_back(make_app: AppFactory) -> None:
    app = make_app(sse_max_streams_per_job=2, sse_max_lifetime_s=1.5)
    async with _client(app) as client:
        job_id, other = await _submit(client), await _submit(client)
        path = f"/v1/jobs/{job_id}/events"
        held = await _hold(app, client, [path, path])
        _assert_too_many(await client.get(path))
        other_stream = await _hold(app, client, [f"/v1/jobs/{other}/events"])
        assert all(r.status_code == 200 for r in await asyncio.gather(*held, *other_stream))
        assert _limiter(app).open_streams == 0
        assert (await client.get(path)).status_code == 200


async def test_total_cap_is_429(make_app: AppFactory) -> None:
    app = make_app(sse_max_streams=2, sse_max_lifetime_s=1.5)
    async with _client(app) as client:
        jobs = [await _submit(client) for _ in range(3)]
        held = await _hold(app, client, [f"/v1/jobs/{j}/events" for j in jobs[:2]])
        _assert_too_many(await client.get(f"/v1/jobs/{jobs[2]}/events"))
        await asyncio.gather(*held)
    assert _limiter(app).open_streams == 0


async def test_per_client_cap_only_with_a_trusted_header(make_app: AppFactory) -> None:
    untrusted = make_app(sse_max_streams_per_client=1, sse_max_lifetime_s=1.5)
    async with _client(untrusted) as client:
        job_id = await _submit(client)
        path = f"/v1/jobs/{job_id}/events"
        held = await _hold(untrusted, client, [path, path], **{"X-Forwarded-For": "1.1.1.1"})
        await asyncio.gather(*held)
    trusted = make_app(
        sse_max_streams_per_client=1,
        sse_max_lifetime_s=1.5,
        trusted_client_header="X-Forwarded-For",
    )
    async with _client(trusted) as client:
        job_id = await _submit(client)
        path = f"/v1/jobs/{job_id}/events"
        held = await _hold(trusted, client, [path], **{"X-Forwarded-For": "1.1.1.1"})
        # The proxy appends what it saw: the last entry counts, not the client's own claim.
        spoofed = await client.get(path, headers={"X-Forwarded-For": "9.9.9.9, 1.1.1.1"})
        _assert_too_many(spoofed)
        held += await _hold(trusted, client, [path], **{"X-Forwarded-For": "2.2.2.2"})
        await asyncio.gather(*held)
    assert _limiter(trusted).open_streams == 0


async def _drive(
    app: FastAPI, path: str, receive: Callable[[], Awaitable[dict[str, Any]]]
) -> tuple[asyncio.Task[None], asyncio.Event]:
    """Runs one request on the raw ASGI app; the event is set when the first body arrives."""
    first_body = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            first_body.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"t")],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }
    return asyncio.create_task(app(scope, receive, send)), first_body  # type: ignore[arg-type]


async def _one_empty_request_then(wait: Callable[[], Awaitable[None]]) -> AsyncIterator[Any]:
    yield {"type": "http.request", "body": b"", "more_body": False}
    await wait()
    yield {"type": "http.disconnect"}


async def test_client_disconnect_releases_the_slot(make_app: AppFactory) -> None:
    app = make_app(sse_max_lifetime_s=60)
    async with _client(app) as client:
        job_id = await _submit(client)
    gone = asyncio.Event()
    messages = _one_empty_request_then(gone.wait)
    task, first_body = await _drive(app, f"/v1/jobs/{job_id}/events", messages.__anext__)
    async with asyncio.timeout(10):
        await first_body.wait()
        assert _limiter(app).open_streams == 1
        gone.set()
        await task
    assert _limiter(app).open_streams == 0


async def test_cancelled_request_releases_the_slot(make_app: AppFactory) -> None:
    """Serve cancels the handler when the proxy sees the client go."""
    app = make_app(sse_max_lifetime_s=60)
    async with _client(app) as client:
        job_id = await _submit(client)
    messages = _one_empty_request_then(asyncio.Event().wait)
    task, first_body = await _drive(app, f"/v1/jobs/{job_id}/events", messages.__anext__)
    async with asyncio.timeout(10):
        await first_body.wait()
        assert _limiter(app).open_streams == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert _limiter(app).open_streams == 0
