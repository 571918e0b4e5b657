"""The pure-ASGI middleware on small ASGI apps: the upload rate floor and request ids.

Clients here are hand-driven `receive` callables, so a stalled or trickling upload is
exact and fast (windows of a few tenths of a second). The same middleware runs in front
of the real app in tests/unit/test_api.py and tests/integration/test_capacity.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import structlog
from starlette.types import Message, Receive, Scope, Send

from deployments.errors import ServiceHTTPException
from deployments.middleware import RequestContextMiddleware, SlowBodyMiddleware

WINDOW_S = 0.3
RATE = 1000  # bytes/s: a window needs 300 bytes


def _scope(headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": "/upload",
        "headers": headers or [],
        "query_string": b"",
    }


async def _reading_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, then answers 200 with its length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


async def _call(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    receive: Receive,
    scope: Scope | None = None,
) -> tuple[int, bytes, float]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    started = time.monotonic()
    async with asyncio.timeout(10):
        await app(scope or _scope(), receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body, time.monotonic() - started


def _client(chunks: list[tuple[float, bytes]], then: Callable[[], Awaitable[None]]) -> Receive:
    """Sends each chunk after its delay, then the end of the body, then waits on `then`."""
    queue = list(chunks)

    async def receive() -> Message:
        if queue:
            delay, body = queue.pop(0)
            await asyncio.sleep(delay)
            return {"type": "http.request", "body": body, "more_body": True}
        if then is not None:
            await then()
        return {"type": "http.request", "body": b"", "more_body": False}

    return receive


def _guarded(app: Any = _reading_app, rate: int = RATE) -> SlowBodyMiddleware:
    return SlowBodyMiddleware(app, min_rate_bytes_s=rate, window_s=WINDOW_S)


def _forever() -> Awaitable[None]:
    return asyncio.Event().wait()


async def _nothing() -> None:
    return None


async def test_a_client_that_sends_nothing_is_cut_off_after_one_window() -> None:
    status, body, took = await _call(_guarded(), _client([], then=_forever))
    assert status == 408
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert took < WINDOW_S * 3


async def test_a_trickle_below_the_floor_is_cut_off() -> None:
    trickle = [(0.05, b"x" * 10)] * 100  # 200 bytes/s against a floor of 1000
    status, _, took = await _call(_guarded(), _client(trickle, then=_nothing))
    assert status == 408
    assert took < WINDOW_S * 3


async def test_a_body_at_the_floor_passes_window_after_window() -> None:
    steady = [(0.05, b"x" * 100)] * 20  # 2000 bytes/s for 1 s: three windows and more
    status, body, _ = await _call(_guarded(), _client(steady, then=_nothing))
    assert (status, body) == (200, b"2000")


async def test_a_stall_after_the_body_is_complete_is_not_judged() -> None:
    """Once the body is in, the app may wait on receive for a disconnect (streaming)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(WINDOW_S * 3):
                await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    done = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> Message:
        if done:
            return done.pop()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    assert (await _call(_guarded(app), receive))[0] == 200


async def test_time_the_app_spends_not_reading_is_not_blamed_on_the_client() -> None:
    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        more = True
        while more:
            more = (await receive()).get("more_body", False)
            await asyncio.sleep(WINDOW_S)  # busy elsewhere; the client is ready at once
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    chunks = [(0.0, b"x")] * 4
    assert (await _call(_guarded(slow_app), _client(chunks, then=_nothing)))[0] == 200


async def test_an_app_that_turns_the_cut_off_into_another_error_still_answers_408() -> None:
    async def swallowing_app(scope: Scope, receive: Receive, send: Send) -> None:
        with contextlib.suppress(ServiceHTTPException):
            await receive()
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b"bad form"})

    status, body, _ = await _call(_guarded(swallowing_app), _client([], then=_forever))
    assert status == 408
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


async def test_an_exception_escaping_the_app_still_answers_408() -> None:
    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    status, _, _ = await _call(_guarded(raw_app), _client([], then=_forever))
    assert status == 408


async def test_a_zero_floor_disables_the_check() -> None:
    status, _, _ = await _call(_guarded(rate=0), _client([(WINDOW_S * 1.5, b"x")], then=_nothing))
    assert status == 200


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        (b"abc-123_X.y:z", True),
        (b"\xff\xfe\xfd", False),  # not UTF-8
        (b"caf\xc3\xa9", False),  # UTF-8, not ASCII
        (b"a" * 129, False),
        (b"a" * 100_000, False),
        (b"line\nbreak", False),
        (b"nul\x00byte", False),
        (b"esc\x1b[31m", False),
        (b"with space", False),
        (b"", False),
    ],
    ids=lambda v: v[:20].hex() if isinstance(v, bytes) else str(v),
)
async def test_any_request_id_bytes_are_logged_safely(raw: bytes, kept: bool) -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(structlog.contextvars.get_contextvars()["request_id"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope = _scope([(b"x-request-id", raw)])
    status, _, _ = await _call(RequestContextMiddleware(app), _client([], then=_nothing), scope)
    assert status == 204
    (request_id,) = seen
    assert request_id.isascii()
    assert request_id.isprintable()
    assert 0 < len(request_id) <= 128
    assert (request_id == raw.decode("latin-1")) is kept
