"""The client of the Whisper deployment, shared by the ingress and the job tracker.

It implements the services' `Transcriber` protocol over a Serve handle, so neither caller
imports the deployment itself (`cluster/` never imports from `deployments/`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from services.core.errors import OverloadedError, UnavailableError
from services.transcription.domain import Transcript, TranscriptionOptions, Waveform
from services.transcription.streaming import StreamEvent


@contextmanager
def serve_call_errors(service: str) -> Iterator[None]:
    """A call through a Serve handle, its failures as service errors: a full queue is 503
    with `Retry-After` (not the 500 Serve would otherwise show), and so is a replica that
    died mid-request. `service` names it in the message ("transcription")."""
    try:
        yield
    except BackPressureError as exc:
        raise OverloadedError(
            f"The {service} service is at capacity; retry shortly.", retry_after_s=2
        ) from exc
    except RayActorError as exc:
        raise UnavailableError(
            f"The {service} replica stopped while handling the request; retry it.",
            retry_after_s=2,
        ) from exc


class ServeTranscriber:
    """The services' `Transcriber` protocol over a handle to `WhisperTranscriber`.

    Maps Serve's failures to service errors: a full queue is 503 with `Retry-After`, not
    the 500 Serve would otherwise show; a replica that died mid-request is 503 too.
    """

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle

    async def transcribe(
        self, audio: Waveform, options: TranscriptionOptions, *, background: bool = False
    ) -> Transcript:
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        with serve_call_errors("transcription"):
            transcript: Transcript = await self._handle.transcribe.remote(
                audio, options, request_id, background
            )
        return transcript

    async def transcribe_stream(
        self, audio: Waveform, options: TranscriptionOptions
    ) -> AsyncIterator[StreamEvent]:
        """The replica's streamed transcription; closing this iterator cancels the call, and
        the replica drops the request's work that has not run."""
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        stream: DeploymentResponseGenerator[Any] = self._handle.options(  # type: ignore[assignment]
            stream=True
        ).transcribe_stream.remote(audio, options, request_id, False)
        try:
            with serve_call_errors("transcription"):
                async for event in stream:
                    yield event
        finally:
            stream.cancel()  # type: ignore[no-untyped-call]

    async def detect_languages(self, audio: Waveform) -> list[tuple[str, float]]:
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        with serve_call_errors("transcription"):
            ranked: list[tuple[str, float]] = await self._handle.detect_languages.remote(
                audio, request_id
            )
        return ranked

    async def ready(self) -> bool:
        ready: bool = await self._handle.ready.remote()
        return ready
