"""Ingress capacity on the real Serve app: what it holds must not starve probes and short work.

Loopback only, and every load loop is bounded in count and time. The main app runs with a
shortened upload-rate window (`slow_body_window_s` in conftest's `settings`), so the slow
uploads below are cut off with 408 within seconds rather than the default 30.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from services.core.clock import utcnow
from tests.conftest import DISTINCT, ENGLISH, report
from tests.integration.serve_admin import whisper_queue_limit

pytestmark = pytest.mark.integration

PROBE_BOUND_S = 2.0
STREAMS = 64
UPLOADS = 64
STREAM_JOBS = 8  # the default per-job cap is 8 streams
FLOOD = 120  # concurrent sync requests, against a Whisper queue lowered to FLOOD_QUEUE
FLOOD_QUEUE = 16
WINDOW_S = 10.0  # conftest's slow_body_window_s for the main app
SHORT = min(ENGLISH, key=lambda c: c.duration_s)


async def _timed(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> float:
    started = time.perf_counter()
    response = await client.request(method, path, **kwargs)
    took = time.perf_counter() - started
    assert response.status_code == 200, (path, response.status_code, response.text[:200])
    return took


async def _transcribe(client: httpx.AsyncClient) -> float:
    return await _timed(
        client,
        "POST",
        "/v1/audio/transcriptions",
        files={"file": (SHORT.name, SHORT.path.read_bytes())},
        data={"model": "whisper-1"},
    )


async def _probe(client: httpx.AsyncClient, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"/healthz": [], "/readyz": []}
    for _ in range(rounds):
        for path, seen in times.items():
            seen.append(await _timed(client, "GET", path, timeout=30))
        await asyncio.sleep(0.2)
    return times


async def _queued_jobs(database_url: str, count: int) -> list[str]:
    """Job rows that stay queued for the test's life: not due for a day, so no tracker
    claims them (a submitted job would run, finish and close its streams)."""
    from services.jobs.tables import Job

    now = utcnow()
    engine = create_async_engine(database_url)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    try:
        async with engine.begin() as connection:
            await connection.execute(
                Job.__table__.insert(),
                [
                    {
                        "id": job_id,
                        "owner": None,
                        "status": "queued",
                        "task": "transcribe",
                        "model": "tiny.en",
                        "options": {"response_format": "json"},
                        "audio_key": None,
                        "audio_sha256": "0" * 64,
                        "audio_bytes": 0,
                        "audio_duration_s": 1.0,
                        "attempts": 0,
                        "max_attempts": 1,
                        "next_attempt_at": now + timedelta(days=1),
                        "created_at": now,
                        "updated_at": now,
                        "expires_at": now + timedelta(days=1),
                        "version": 1,
                    }
                    for job_id in ids
                ],
            )
    finally:
        await engine.dispose()
    return ids


async def _open_stream(
    client: httpx.AsyncClient, path: str, opened: asyncio.Queue[int]
) -> list[str]:
    """Holds an event stream open until cancelled; reports its status once it is open."""
    lines: list[str] = []
    async with client.stream("GET", path, timeout=httpx.Timeout(30, read=None)) as response:
        await opened.put(response.status_code)
        async for line in response.aiter_lines():
            lines.append(line)
    return lines


async def _slow_upload(client: httpx.AsyncClient, trickle: bool) -> httpx.Response:
    """A job upload below the rate floor: 512 bytes/s, or nothing at all after the head."""

    async def body() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        for _ in range(int(WINDOW_S * 4)):  # bounded: ends long after the cut-off
            await asyncio.sleep(0.5)
            if trickle:
                yield b"\0" * 256

    return await client.post(
        "/v1/jobs",
        content=body(),
        headers={"content-type": "multipart/form-data; boundary=b"},
        timeout=WINDOW_S * 4,
    )


async def test_held_streams_and_uploads_leave_probes_and_short_work_fast(
    serve_url: str, serve_database: str
) -> None:
    load_limits = httpx.Limits(max_connections=STREAMS + UPLOADS + 16, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=serve_url, timeout=60) as probe:
        await _transcribe(probe)  # warm
        idle_transcribe = statistics.median([await _transcribe(probe) for _ in range(3)])
        idle = await _probe(probe, 3)

        jobs = await _queued_jobs(serve_database, STREAM_JOBS)
        async with httpx.AsyncClient(base_url=serve_url, limits=load_limits) as load:
            opened: asyncio.Queue[int] = asyncio.Queue()
            streams = [
                asyncio.create_task(
                    _open_stream(load, f"/v1/jobs/{jobs[i % STREAM_JOBS]}/events", opened)
                )
                for i in range(STREAMS)
            ]
            async with asyncio.timeout(60):
                statuses = [await opened.get() for _ in range(STREAMS)]
            assert statuses == [200] * STREAMS
            loaded_at = time.monotonic()
            uploads = [
                asyncio.create_task(_slow_upload(load, trickle=i % 2 == 0)) for i in range(UPLOADS)
            ]
            await asyncio.sleep(1.0)  # every upload has sent its head and is being held
            loaded = await _probe(probe, 4)
            loaded_transcribe = await _transcribe(probe)
            probed_within_s = time.monotonic() - loaded_at
            cut = await asyncio.wait_for(asyncio.gather(*uploads), WINDOW_S * 4)
            for stream in streams:
                stream.cancel()
            await asyncio.gather(*streams, return_exceptions=True)

    def figures(times: list[float]) -> str:
        return f"p50 {statistics.median(times):.3f} s, max {max(times):.3f} s"

    report(
        f"capacity, {STREAMS} idle streams + {UPLOADS} slow uploads: "
        f"healthz {figures(loaded['/healthz'])} (idle {figures(idle['/healthz'])}); "
        f"readyz {figures(loaded['/readyz'])} (idle {figures(idle['/readyz'])}); "
        f"short transcription {loaded_transcribe:.3f} s (idle {idle_transcribe:.3f} s); "
        f"probed within {probed_within_s:.1f} s of the load"
    )
    # The probes ran while every upload was still held (they are cut off after the window).
    assert probed_within_s < WINDOW_S
    assert max(loaded["/healthz"]) < PROBE_BOUND_S
    assert max(loaded["/readyz"]) < PROBE_BOUND_S
    assert loaded_transcribe < idle_transcribe + PROBE_BOUND_S
    # Every slow upload, trickling or silent, was cut off with 408 and OpenAI's body.
    assert Counter(r.status_code for r in cut) == {408: UPLOADS}
    assert {r.json()["error"]["code"] for r in cut} == {"request_timeout"}


async def test_a_sync_flood_gets_only_200_or_503_with_retry_after(serve_url: str) -> None:
    # With the shipped queue (32 ongoing + 128 queued) whether a flood on this 2-core machine
    # reaches the bound depends on how fast the ingress decodes; a lowered queue makes it
    # reach the bound every run.
    with whisper_queue_limit(FLOOD_QUEUE):
        await _flood(serve_url)


async def _flood(serve_url: str) -> None:
    clip = DISTINCT[0]
    payload = clip.path.read_bytes()
    limits = httpx.Limits(max_connections=FLOOD + 8, max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(base_url=serve_url, timeout=120, limits=limits) as load,
        httpx.AsyncClient(base_url=serve_url, timeout=30) as probe,
    ):

        async def one() -> httpx.Response:
            return await load.post(
                "/v1/audio/transcriptions",
                files={"file": (clip.name, payload)},
                data={"model": "whisper-1"},
            )

        started = time.monotonic()
        flood = [asyncio.create_task(one()) for _ in range(FLOOD)]
        healthz: list[float] = []
        while not all(task.done() for task in flood) and time.monotonic() - started < 150:
            healthz.append(await _timed(probe, "GET", "/healthz"))
            await asyncio.sleep(0.25)
        responses = await asyncio.wait_for(asyncio.gather(*flood), 30)
        took = time.monotonic() - started

    counts = Counter(r.status_code for r in responses)
    report(
        f"flood of {FLOOD} concurrent sync requests: {dict(sorted(counts.items()))} in "
        f"{took:.1f} s; healthz during it p50 {statistics.median(healthz):.3f} s, "
        f"max {max(healthz):.3f} s over {len(healthz)} probes"
    )
    assert set(counts) <= {200, 429, 503}, counts
    assert counts[503] + counts[429] > 0, "the flood never reached the queue's bound"
    for response in responses:
        if response.status_code != 200:
            assert int(response.headers["Retry-After"]) > 0
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert max(healthz) < PROBE_BOUND_S


async def test_a_full_serve_queue_is_503_with_retry_after_from_rays_proxy(serve_url: str) -> None:
    """What the Ingress's own bounded queue answers when full, shown on a tiny deployment
    with the Ingress's backpressure settings (filling 512 + 256 real slots here would take
    the machine): Ray's proxy answers before any app code runs, so the body is Ray's text,
    not OpenAI's JSON. The README says so."""
    from ray import serve

    app = QueueProbe.bind()  # type: ignore[attr-defined]
    serve.run(app, name="queue-probe", route_prefix="/queue-probe")
    try:
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=serve_url, timeout=30, limits=limits) as client:
            responses = await asyncio.gather(*(client.get("/queue-probe") for _ in range(6)))
    finally:
        serve.delete("queue-probe")
    refused = [r for r in responses if r.status_code != 200]
    assert refused
    assert {r.status_code for r in refused} == {503}
    assert {r.headers.get("Retry-After") for r in refused} == {"2"}
    report(
        f"Serve queue full: {len(refused)}/6 got 503, Retry-After 2, body from Ray's proxy: "
        f"{refused[0].headers.get('content-type')!r} {refused[0].text[:120]!r}"
    )
    assert not refused[0].text.lstrip().startswith("{")  # documented: not OpenAI's body


async def test_non_utf8_request_id_through_rays_proxy(serve_url: str) -> None:
    """The app copes with any X-Request-ID bytes (tests/unit/test_middleware.py); this shows
    what Ray's proxy does with them before the app could see them."""
    host, port = serve_url.removeprefix("http://").split(":")
    answers = {}
    for name, value in {"non-utf8": b"\xff\xfe", "control": b"a\x01b", "long": b"r" * 8000}.items():
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-ID: "
            + value
            + b"\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(30):
            raw = await reader.read()
        writer.close()
        await writer.wait_closed()
        answers[name] = raw.split(b"\r\n", 1)[0].decode("latin-1") or "(connection closed)"
    report(f"X-Request-ID through Ray's proxy: {answers}")
    async with httpx.AsyncClient(base_url=serve_url, timeout=30) as client:
        assert (await client.get("/healthz")).status_code == 200  # the proxy is still fine
    assert answers["long"].endswith("200 OK")


def _queue_probe() -> Any:
    from ray import serve

    @serve.deployment(
        max_ongoing_requests=1,
        max_queued_requests=1,
        backpressure_config={"status_code": 503, "retry_after_s": 2},
        ray_actor_options={"num_cpus": 0},
    )
    class QueueProbe:
        async def __call__(self, request: Any) -> str:
            await asyncio.sleep(2)
            return "ok"

    return QueueProbe


QueueProbe = _queue_probe()
