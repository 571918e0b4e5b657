"""The synchronous transcription use case: check the request, decode, transcribe, render.

The model runs behind the `Transcriber` protocol: a Serve deployment handle in production,
the in-process engine in unit tests and tools. Nothing here knows which. The upload's size
is bounded before it gets here, by the HTTP edge's body limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import BinaryIO, Protocol

from services.transcription.audio import AudioTooLongError, decode_audio
from services.transcription.domain import SAMPLE_RATE, Transcript, TranscriptionOptions, Waveform
from services.transcription.formats import RenderedTranscript, render
from services.transcription.models import ServedModel, ServedModels
from services.transcription.request import TranscriptionRequest
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
    """Routes each request to its model's transcriber and result cache (`models.resolve`)."""

    def __init__(
        self,
        transcribers: Mapping[str, Transcriber],
        results: Mapping[str, ResultCache],
        *,
        models: ServedModels,
        sync_max_duration_s: float,
    ) -> None:
        missing = set(models.ids) - set(transcribers) | set(models.ids) - set(results)
        if missing:
            raise ValueError(f"no transcriber or result cache for the served models {missing}")
        self._transcribers = dict(transcribers)
        self._results_by_model = dict(results)
        self.models = models
        self._sync_max_duration_s = sync_max_duration_s

    @property
    def model_id(self) -> str:
        """The default model's id: the one `whisper-1` names."""
        return self.models.default.id

    @property
    def accepted_model_ids(self) -> tuple[str, ...]:
        return self.models.accepted_ids

    def check(self, request: TranscriptionRequest) -> TranscriptionRequest:
        """What the form's schema cannot know: whether the model is served here."""
        self.models.resolve(request.model)
        return request

    def route(self, request: TranscriptionRequest) -> tuple[ServedModel, Transcriber]:
        """The served model a request names and the transcriber that runs it."""
        model = self.models.resolve(request.model)
        return model, self._transcribers[model.id]

    async def transcribe(
        self,
        file: BinaryIO,
        request: TranscriptionRequest,
        *,
        admit: Callable[[float], Awaitable[None]] | None = None,
    ) -> RenderedTranscript:
        """Decode the upload (bounded), run the model and render the requested format.

        `admit` is charged the decoded length before inference (it raises to refuse)."""
        model, transcriber = self.route(request)
        results = self._results_by_model[model.id]
        options = request.engine_options()
        audio_sha256 = await asyncio.to_thread(sha256_of, file) if results.enabled else ""
        cached = await results.get(audio_sha256, options)
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
        transcript = await transcriber.transcribe(audio, options)
        await results.put(audio_sha256, options, transcript)
        return render(transcript, request)
