"""Pure ASGI middleware: a full disk answers 507 `insufficient_storage`, never 400 or 500.

Three layers, because no single one sees every case:
1. Before the body is read, its `Content-Length` is checked against the free space of every
   disk it will land on (the multipart parser's spool in `tempfile.gettempdir()`, and the
   audio store for jobs), keeping the configured reserve (`DiskGuard`).
2. While the body streams in, each chunk is checked against the spool's free space, so an
   upload without a length, or a disk filled meanwhile by something else, is cut off with
   507 before the parser's write fails. Raised as `ServiceHTTPException`, the one kind of
   error FastAPI lets out of form parsing unchanged.
3. A write that fails anyway: FastAPI turns any error while parsing a form into a 400; its
   handler sends that 400 inside the `except` block, so `sys.exception()` still shows the
   ENOSPC it came from and the 400 is replaced by a 507. An out-of-space `OSError` that
   escapes a route (before its response started) becomes a 507 as well. The storage layer
   maps its own ENOSPC to `InsufficientStorageError` and removes its partial file; the
   spool is an unnamed temp file the parser closes on error, so nothing is left behind.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from starlette.formparsers import MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.errors import ServiceHTTPException, error_response
from services.core.errors import InsufficientStorageError
from services.core.settings import Settings
from services.core.storage import DiskGuard, Reservation, is_out_of_space, out_of_space_error

# Upload endpoints, and whether the upload is also kept in the audio store.
UPLOAD_PATHS = {
    "/v1/jobs": True,
    "/v1/audio/transcriptions": False,
    "/v1/audio/translations": False,
}
# The parser keeps a file part in memory up to this size, then writes all of it at once.
SPOOL_CUSHION_BYTES = MultiPartParser.spool_max_size


class StorageGuardMiddleware:
    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        # Job audio on S3 takes no local disk: only the multipart spool is checked then.
        self.audio_dir = settings.audio_dir if settings.storage.backend == "local" else None
        self.guard = DiskGuard(
            reserve_bytes=settings.jobs.disk_reserve_bytes,
            reserve_fraction=settings.jobs.disk_reserve_fraction,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stored = UPLOAD_PATHS.get(scope.get("path", "").rstrip("/"))
        if scope["type"] != "http" or scope.get("method") != "POST" or stored is None:
            await self.app(scope, receive, send)
            return
        spool = Path(tempfile.gettempdir())
        header = dict(scope.get("headers", [])).get(b"content-length", b"")
        declared = int(header) if header.isdigit() else None
        reservation: Reservation | None = None
        if declared is not None:
            try:
                reservation = self.guard.admit(
                    declared, [spool, self.audio_dir] if stored and self.audio_dir else [spool]
                )
            except InsufficientStorageError as exc:
                await error_response(exc)(scope, receive, send)
                return
        # A declared upload was admitted with the reserve; mid-stream it is only stopped
        # short of a failing write. An undeclared one must keep the reserve as it goes.
        keep_free = SPOOL_CUSHION_BYTES if declared is not None else None
        started = replaced = False

        async def checked_receive() -> Message:
            message = await receive()
            body = message.get("body", b"") if message["type"] == "http.request" else b""
            if body:
                try:
                    self.guard.check_room(spool, len(body), keep_free=keep_free)
                except InsufficientStorageError as exc:
                    raise ServiceHTTPException(exc) from None
            return message

        async def checked_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return  # the rest of a 400 already replaced by the 507
            if message["type"] == "http.response.start":
                started = True
                if message["status"] == 400 and is_out_of_space(sys.exception()):
                    replaced = True
                    await error_response(out_of_space_error())(scope, receive, send)
                    return
            await send(message)

        try:
            await self.app(scope, checked_receive, checked_send)
        except OSError as exc:
            if started or not is_out_of_space(exc):
                raise
            await error_response(out_of_space_error())(scope, receive, send)
        finally:
            if reservation is not None:
                reservation.release()
