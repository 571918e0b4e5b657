"""The synchronous transcription use case: check the request, decode, transcribe, render.

The model runs behind the `Transcriber` protocol: a Serve deployment handle in production,
the in-process engine in unit tests and tools. Nothing here knows which. The upload's size
is bounded before it gets here, by the HTTP edge's body limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import BinaryIO, Protocol, runtime_checkable

from services.core.errors import InvalidRequestError, UnavailableError
from services.diarization.pipeline import Turn
from services.diarization.render import diarized_json
from services.transcription.audio import AudioTooLongError, decode_audio
from services.transcription.domain import SAMPLE_RATE, Transcript, TranscriptionOptions, Waveform
from services.transcription.formats import RenderedTranscript, render
from services.transcription.models import ServedModel, ServedModels
from services.transcription.request import TranscriptionRequest
from services.transcription.result_cache import ResultCache, sha256_of
from services.transcription.speaker_references import decode_references
from services.transcription.streaming import (
    DeltaBuilder,
    ItemDone,
    StreamEvent,
    StreamStart,
    TextDone,
    TranscriptEvent,
    stream_whole,
)

LANGUAGE_SAMPLE_S = 30.0
"""Language detection listens to the first 30 s of speech; that is what it is charged."""


class Transcriber(Protocol):
    """Something that runs the model: `transcribe` one decoded waveform.

    `background` work (asynchronous jobs) yields to interactive requests.
    """

    async def transcribe(
        self, audio: Waveform, options: TranscriptionOptions, *, background: bool = False
    ) -> Transcript: ...

    async def ready(self) -> bool: ...


@runtime_checkable
class LiveTranscriber(Transcriber, Protocol):
    """A `Transcriber` that also streams a transcript as it is made and ranks languages:
    the Serve deployment and the in-process engine (asynchronous jobs need neither)."""

    def transcribe_stream(
        self, audio: Waveform, options: TranscriptionOptions
    ) -> AsyncIterator[StreamEvent]: ...

    async def detect_languages(self, audio: Waveform) -> list[tuple[str, float]]: ...


class SpeakerLabeller(Protocol):
    """Who spoke when (the `SpeakerDiarizer` deployment in production): speaker turns of
    a 16 kHz waveform, named after the matching `references` (name, waveform) if any."""

    async def diarize(
        self,
        audio: Waveform,
        num_speakers: int | None,
        references: list[tuple[str, Waveform]],
    ) -> list[Turn]: ...


class DiarizationUnavailableError(InvalidRequestError):
    default_code = "diarization_unavailable"


DIARIZATION_UNAVAILABLE = (
    "Speaker labels (response_format=diarized_json) are not enabled on this server. To "
    "enable them, install the extra `rayscribe[diarization]` and set "
    "RAYSCRIBE_DIARIZATION__ENABLED=true."
)


class TranscriptionService:
    """Routes each request to its model's transcriber and result cache (`models.resolve`)."""

    def __init__(
        self,
        transcribers: Mapping[str, Transcriber],
        results: Mapping[str, ResultCache],
        *,
        models: ServedModels,
        sync_max_duration_s: float,
        diarizer: SpeakerLabeller | None = None,
    ) -> None:
        missing = set(models.ids) - set(transcribers) | set(models.ids) - set(results)
        if missing:
            raise ValueError(f"no transcriber or result cache for the served models {missing}")
        self._transcribers = dict(transcribers)
        self._results_by_model = dict(results)
        self.models = models
        self._sync_max_duration_s = sync_max_duration_s
        self._diarizer = diarizer

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
        if request.diarized:
            return await self._diarized(file, request, transcriber, results, admit)
        options = request.engine_options()
        audio_sha256 = await asyncio.to_thread(sha256_of, file) if results.enabled else ""
        cached = await results.get(audio_sha256, options)
        if cached is not None:
            return render(cached, request)
        audio = await self._decode(file)
        if admit is not None:
            await admit(len(audio) / SAMPLE_RATE)
        transcript = await transcriber.transcribe(audio, options)
        await results.put(audio_sha256, options, transcript)
        return render(transcript, request)

    async def _diarized(
        self,
        file: BinaryIO,
        request: TranscriptionRequest,
        transcriber: Transcriber,
        results: ResultCache,
        admit: Callable[[float], Awaitable[None]] | None,
    ) -> RenderedTranscript:
        """Transcription with word timing and diarization side by side, then each word takes
        the speaker of the turn at its midpoint (`diarized_json`).

        The transcription half goes through the result cache like any request with word
        timestamps; the speaker turns depend on `num_speakers` and the references and are
        computed every time."""
        if self._diarizer is None:
            raise DiarizationUnavailableError(DIARIZATION_UNAVAILABLE, param="response_format")
        references = await decode_references(request)
        options = request.engine_options()
        audio_sha256 = await asyncio.to_thread(sha256_of, file) if results.enabled else ""
        cached = await results.get(audio_sha256, options)
        audio = await self._decode(file)
        if admit is not None:
            await admit(len(audio) / SAMPLE_RATE)
        diarize = self._diarizer.diarize(audio, request.num_speakers, references)
        if cached is not None:
            return RenderedTranscript(diarized_json(cached, await diarize), "application/json")
        transcript, turns = await asyncio.gather(transcriber.transcribe(audio, options), diarize)
        await results.put(audio_sha256, options, transcript)
        return RenderedTranscript(diarized_json(transcript, turns), "application/json")

    async def stream(
        self,
        file: BinaryIO,
        request: TranscriptionRequest,
        *,
        admit: Callable[[float], Awaitable[None]] | None = None,
    ) -> AsyncIterator[TranscriptEvent]:
        """`stream=true`: everything that can be refused is refused here, before the first
        event (the upload is decoded and charged as for `transcribe`); the iterator returned
        then yields deltas as the model finishes each piece, and `TextDone`."""
        model, transcriber = self.route(request)
        results = self._results_by_model[model.id]
        options = request.engine_options()
        audio_sha256 = await asyncio.to_thread(sha256_of, file) if results.enabled else ""
        cached = await results.get(audio_sha256, options)
        if cached is not None:
            return _iterate(stream_whole(cached, options))
        live = _live(transcriber)
        audio = await self._decode(file)
        if admit is not None:
            await admit(len(audio) / SAMPLE_RATE)
        # The replica's first event comes before the answer starts, so a full queue or a
        # replica that cannot take the request is still a plain 503, not an error event.
        events = live.transcribe_stream(audio, options)
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()  # type: ignore[attr-defined]
            raise
        return self._streamed(first, events, results, options, audio_sha256)

    async def _streamed(
        self,
        first: StreamEvent,
        events: AsyncIterator[StreamEvent],
        results: ResultCache,
        options: TranscriptionOptions,
        audio_sha256: str,
    ) -> AsyncIterator[TranscriptEvent]:
        builder = DeltaBuilder(first, options) if isinstance(first, StreamStart) else None
        try:
            async for event in events:
                if isinstance(event, StreamStart):
                    builder = DeltaBuilder(event, options)
                elif isinstance(event, ItemDone) and builder is not None:
                    for delta in builder.add(event):
                        yield delta
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        if builder is None:
            raise UnavailableError("The transcription stream ended before it started; retry.")
        done: TextDone = builder.done()
        await results.put(audio_sha256, options, done.transcript)
        yield done

    async def detect_languages(
        self,
        file: BinaryIO,
        request: TranscriptionRequest,
        *,
        admit: Callable[[float], Awaitable[None]] | None = None,
    ) -> tuple[list[tuple[str, float]], float]:
        """The languages the model hears in the first 30 s of speech, most likely first, and
        the audio's length; 400 for a model that knows only English."""
        model, transcriber = self.route(request)
        live = _live(transcriber)
        audio = await self._decode(file)
        duration_s = len(audio) / SAMPLE_RATE
        if admit is not None:
            await admit(min(duration_s, LANGUAGE_SAMPLE_S))
        ranked = await live.detect_languages(audio)
        if not ranked:
            raise InvalidRequestError(
                f"The model {model.id!r} knows only English, so it cannot detect "
                "languages; ask a multilingual model (such as base).",
                param="model",
                code="unsupported_model",
            )
        return ranked, duration_s

    async def _decode(self, file: BinaryIO) -> Waveform:
        try:
            return await asyncio.to_thread(
                decode_audio, file, max_duration_s=self._sync_max_duration_s
            )
        except AudioTooLongError as exc:
            raise AudioTooLongError(
                f"{exc.message} Submit longer audio as an asynchronous job: POST /v1/jobs.",
                param="file",
            ) from exc


def _live(transcriber: Transcriber) -> LiveTranscriber:
    if not isinstance(transcriber, LiveTranscriber):
        raise UnavailableError("This server cannot stream transcripts or detect languages.")
    return transcriber


async def _iterate(events: list[TranscriptEvent]) -> AsyncIterator[TranscriptEvent]:
    for event in events:
        yield event
