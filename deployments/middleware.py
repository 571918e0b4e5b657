"""Pure ASGI middleware: request-scoped logging, upload size limits, an upload rate floor.

All wrap the ASGI callables rather than Starlette's `BaseHTTPMiddleware`, so the request
body keeps streaming (the size limit counts it as it arrives) and nothing is buffered.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Mapping

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.errors import ServiceHTTPException, error_response
from services.core.errors import RequestTimeoutError
from services.core.logging import get_logger
from services.transcription.audio import FileTooLargeError

log = get_logger(__name__)

SAFE_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")
"""A client's X-Request-ID is kept if it is 1-128 visible ASCII characters; else replaced."""


def request_id_of(raw: bytes | None) -> str:
    """The id to log the request under: the client's when it is safe to put in a log line,
    a fresh one otherwise (non-UTF-8, control characters, over-long, empty)."""
    if raw is not None and SAFE_REQUEST_ID.fullmatch(raw):
        return raw.decode("ascii")
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Binds the request id to every log line of the request and logs its outcome.

    Serve's proxy takes the client's `X-Request-ID` or generates one, passes it in, and
    echoes it on the response; we only read it (a second header would be sent otherwise).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        request_id = request_id_of(headers.get(b"x-request-id"))
        status = 500
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_status)
            finally:
                log.info(
                    "request_finished",
                    method=scope.get("method"),
                    path=scope.get("path"),
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                )


class BodyLimitMiddleware:
    """Refuses request bodies over a per-path limit with 413: the only upload size check.

    Refused at once when `Content-Length` says so; otherwise the bytes are counted while
    they stream in and the request fails as soon as the limit is passed, before the form
    parser has spooled more. The limit covers the whole body (the file and the few hundred
    bytes of form fields around it), so no later check of the file's size is needed.
    FastAPI's own `max_body_size` is not used: it answers a too-long `Content-Length` with
    a plain-text 413 that no exception handler sees, not OpenAI's error body.
    """

    def __init__(
        self, app: ASGIApp, *, limits: Mapping[str, int], default_limit_bytes: int
    ) -> None:
        self.app = app
        self.limits = dict(limits)
        self.default_limit_bytes = default_limit_bytes

    def _limit_for(self, path: str) -> int:
        return self.limits.get(path.rstrip("/"), self.default_limit_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope["path"])
        error = FileTooLargeError(
            f"The request body is larger than the {limit} bytes this endpoint accepts.",
            param="file",
        )
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(error)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ServiceHTTPException(error)
            return message

        await self.app(scope, counting_receive, send)


class _BodyPace:
    """Wraps `receive` and judges the body's arrival rate window by window.

    Only time spent waiting inside `receive` counts, so a slow app never blames its client.
    The underlying `receive` is never cancelled between windows (a message could be lost);
    it is cancelled only when the request is cut off.
    """

    def __init__(
        self, receive: Receive, *, floor_bytes: float, window_s: float, clock: Callable[[], float]
    ) -> None:
        self._receive = receive
        self._floor_bytes = floor_bytes
        self._window_s = window_s
        self._clock = clock
        self._pending: asyncio.Future[Message] | None = None
        self._waited_s = 0.0
        self._window_bytes = 0
        self.complete = False
        self.cut_off = False

    async def receive(self) -> Message:
        if self.complete:
            return await self._receive()  # e.g. waiting for http.disconnect while streaming
        while True:
            if self._pending is None:
                self._pending = asyncio.ensure_future(self._receive())
            started = self._clock()
            done, _ = await asyncio.wait({self._pending}, timeout=self._window_s - self._waited_s)
            self._waited_s += self._clock() - started
            if not done:
                self._judge()
                continue
            message = self._pending.result()
            self._pending = None
            if message["type"] == "http.request":
                self._window_bytes += len(message.get("body", b""))
                self.complete = not message.get("more_body", False)
            else:
                self.complete = True  # http.disconnect: nothing more will arrive
            if not self.complete and self._waited_s >= self._window_s:
                self._judge()
            return message

    def _judge(self) -> None:
        if self._window_bytes < self._floor_bytes:
            self.cut_off = True
            self.close()
            raise ServiceHTTPException(self.error())
        self._waited_s = 0.0
        self._window_bytes = 0

    def error(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"The request body arrived slower than {self._floor_bytes / self._window_s:.0f} "
            f"bytes/s over {self._window_s:g} s and was cut off; send it faster."
        )

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None


class SlowBodyMiddleware:
    """Cuts off with 408 a request body that arrives slower than a floor, judged over a window.

    A client that sends nothing at all is cut off after one window too: the wait inside
    `receive` is bounded, so a stalled upload cannot hold an ingress slot forever.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        min_rate_bytes_s: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.min_rate_bytes_s = min_rate_bytes_s
        self.window_s = window_s
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.min_rate_bytes_s <= 0:
            await self.app(scope, receive, send)
            return
        pace = _BodyPace(
            receive,
            floor_bytes=self.min_rate_bytes_s * self.window_s,
            window_s=self.window_s,
            clock=self.clock,
        )
        started = replaced = False

        async def guarded_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return  # the app's own answer to a cut-off body is dropped
            if message["type"] == "http.response.start":
                if pace.cut_off and message["status"] != pace.error().status_code:
                    # The app turned the cut-off into something else (e.g. a 400 from the
                    # form parser): the client still learns the truth.
                    replaced = started = True
                    await error_response(pace.error())(scope, receive, send)
                    return
                started = True
            await send(message)

        try:
            await self.app(scope, pace.receive, guarded_send)
        except Exception:
            if not pace.cut_off:
                raise
            if not started:
                await error_response(pace.error())(scope, receive, send)
        finally:
            pace.close()
