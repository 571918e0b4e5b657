"""The synchronous transcription use case: check the request, decode, transcribe, render.

The model runs behind the `Transcriber` protocol: a Serve deployment handle in production,
the in-process engine in unit tests and tools. Nothing here knows which. The upload's size
is bounded before it gets here, by the HTTP edge's body limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import BinaryIO, Protocol

from services.transcription.audio import AudioTooLongError, decode_audio
from services.transcription.domain import SAMPLE_RATE, Transcript, TranscriptionOptions, Waveform
from services.transcription.formats import RenderedTranscript, render
from services.transcription.request import (
    OPENAI_MODEL_ALIAS,
    TranscriptionRequest,
    check_model,
)
from services.transcription.result_cache import ResultCache, sha256_of


class Transcriber(Protocol):
    """Something that runs the model: `transcribe` one decoded waveform.

    `background` work (asynchronous jobs) yields to interactive requests.
    """

    async def transcribe(
        self, audio: Waveform, options: TranscriptionOptions, *, background: bool = False
    ) -> Transcript: ...

    async def ready(self) -> bool: ...


class TranscriptionService:
    def __init__(
        self,
        transcriber: Transcriber,
        results: ResultCache,
        *,
        model_id: str,
        sync_max_duration_s: float,
    ) -> None:
        self._transcriber = transcriber
        self._results = results
        self.model_id = model_id
        self._sync_max_duration_s = sync_max_duration_s

    @property
    def accepted_model_ids(self) -> tuple[str, ...]:
        return (OPENAI_MODEL_ALIAS, self.model_id)

    def check(self, request: TranscriptionRequest) -> TranscriptionRequest:
        """What the form's schema cannot know: whether the model is served here."""
        check_model(request, self.accepted_model_ids)
        return request

    async def transcribe(
        self,
        file: BinaryIO,
        request: TranscriptionRequest,
        *,
        admit: Callable[[float], Awaitable[None]] | None = None,
    ) -> RenderedTranscript:
        """Decode the upload (bounded), run the model and render the requested format.

        `admit` is charged the decoded length before inference (it raises to refuse)."""
        self.check(request)
        options = request.engine_options()
        audio_sha256 = await asyncio.to_thread(sha256_of, file) if self._results.enabled else ""
        cached = await self._results.get(audio_sha256, options)
        if cached is not None:
            return render(cached, request)
        try:
            audio = await asyncio.to_thread(
                decode_audio, file, max_duration_s=self._sync_max_duration_s
            )
        except AudioTooLongError as exc:
            raise AudioTooLongError(
                f"{exc.message} Submit longer audio as an asynchronous job: POST /v1/jobs.",
                param="file",
            ) from exc
        if admit is not None:
            await admit(len(audio) / SAMPLE_RATE)
        transcript = await self._transcriber.transcribe(audio, options)
        await self._results.put(audio_sha256, options, transcript)
        return render(transcript, request)
