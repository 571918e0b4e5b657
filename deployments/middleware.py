"""Pure ASGI middleware: request-scoped logging and upload size limits.

Both wrap the ASGI callables rather than Starlette's `BaseHTTPMiddleware`, so the request
body keeps streaming (the size limit counts it as it arrives) and nothing is buffered.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.errors import ServiceHTTPException, error_response
from services.core.logging import get_logger
from services.transcription.audio import FileTooLargeError

log = get_logger(__name__)

MULTIPART_OVERHEAD_BYTES = 64 * 1024
"""Room for the form fields and boundaries around the file part."""


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
        request_id = headers.get(b"x-request-id", b"").decode() or uuid.uuid4().hex
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
    """Refuses request bodies over a per-path limit with 413.

    Refused at once when `Content-Length` says so; otherwise the bytes are counted while
    they stream in and the request fails as soon as the limit is passed.
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
