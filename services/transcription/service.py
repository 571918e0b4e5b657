"""The synchronous transcription use case: validate the request, decode, transcribe, render.

The model runs behind the `Transcriber` protocol: a Serve deployment handle in production,
the in-process engine in unit tests and tools. Nothing here knows which.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from services.core.errors import InvalidRequestError
from services.transcription import formats
from services.transcription.audio import AudioTooLongError, FileTooLargeError, decode_audio
from services.transcription.domain import (
    SAMPLE_RATE,
    DecodeOptions,
    ResponseFormat,
    Task,
    TimestampGranularity,
    Transcript,
    TranscriptionOptions,
    Waveform,
)
from services.transcription.languages import LANGUAGE_NAMES
from services.transcription.result_cache import ResultCache, sha256_of

OPENAI_MODEL_ALIAS = "whisper-1"
MAX_PROMPT_CHARS = 2000


class Transcriber(Protocol):
    """Something that runs the model: `transcribe` one decoded waveform.

    `background` work (asynchronous jobs) yields to interactive requests.
    """

    async def transcribe(
        self, audio: Waveform, options: TranscriptionOptions, *, background: bool = False
    ) -> Transcript: ...

    async def ready(self) -> bool: ...


class ModelNotFoundError(InvalidRequestError):
    default_code = "model_not_found"


@dataclass(frozen=True)
class TranscriptionRequest:
    """A validated request: what to decode and how to render it."""

    task: Task
    options: TranscriptionOptions
    response_format: ResponseFormat
    granularities: frozenset[TimestampGranularity]


@dataclass(frozen=True)
class RenderedTranscript:
    content: dict[str, Any] | str
    media_type: str


def build_request(
    *,
    accepted_models: tuple[str, ...],
    task: Task,
    model: str,
    language: str | None,
    prompt: str | None,
    response_format: ResponseFormat,
    temperature: float,
    granularities: Iterable[TimestampGranularity],
) -> TranscriptionRequest:
    """Check the fields a schema cannot, with messages that say what was expected."""
    if model not in accepted_models:
        raise ModelNotFoundError(
            f"The model {model!r} does not exist here; this server serves "
            f"{' or '.join(repr(m) for m in accepted_models)}.",
            param="model",
        )
    if language is not None:
        language = language.strip().lower() or None
    if language is not None and language not in LANGUAGE_NAMES:
        raise InvalidRequestError(
            f"Unknown language {language!r}; expected an ISO-639-1 code such as 'en' or 'de'.",
            param="language",
            code="invalid_language",
        )
    if not 0.0 <= temperature <= 1.0:
        raise InvalidRequestError(
            f"temperature must be between 0 and 1, got {temperature:g}.", param="temperature"
        )
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequestError(
            f"The prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are allowed.",
            param="prompt",
        )
    wanted = frozenset(granularities) or frozenset({TimestampGranularity.SEGMENT})
    words = response_format is ResponseFormat.VERBOSE_JSON and TimestampGranularity.WORD in wanted
    decode = DecodeOptions(
        task=task, language=language, prompt=prompt or None, temperature=temperature
    )
    return TranscriptionRequest(
        task=task,
        options=TranscriptionOptions(decode=decode, word_timestamps=words),
        response_format=response_format,
        granularities=wanted,
    )


class TranscriptionService:
    def __init__(
        self,
        transcriber: Transcriber,
        results: ResultCache,
        *,
        model_id: str,
        max_upload_bytes: int,
        sync_max_duration_s: float,
    ) -> None:
        self._transcriber = transcriber
        self._results = results
        self.model_id = model_id
        self._max_upload_bytes = max_upload_bytes
        self._sync_max_duration_s = sync_max_duration_s

    @property
    def accepted_model_ids(self) -> tuple[str, ...]:
        return (OPENAI_MODEL_ALIAS, self.model_id)

    def build_request(self, **fields: Any) -> TranscriptionRequest:
        return build_request(accepted_models=self.accepted_model_ids, **fields)

    async def transcribe(
        self,
        file: BinaryIO,
        size: int | None,
        request: TranscriptionRequest,
        *,
        admit: Callable[[float], Awaitable[None]] | None = None,
    ) -> RenderedTranscript:
        """Decode the upload (bounded), run the model and render the requested format.

        `admit` is charged the decoded length before inference (it raises to refuse)."""
        if size is not None and size > self._max_upload_bytes:
            raise FileTooLargeError(
                f"The file has {size} bytes; this endpoint accepts at most "
                f"{self._max_upload_bytes}.",
                param="file",
            )
        audio_sha256 = await asyncio.to_thread(sha256_of, file) if self._results.enabled else ""
        cached = await self._results.get(audio_sha256, request.options)
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
        transcript = await self._transcriber.transcribe(audio, request.options)
        await self._results.put(audio_sha256, request.options, transcript)
        return render(transcript, request)


def render(transcript: Transcript, request: TranscriptionRequest) -> RenderedTranscript:
    fmt = request.response_format
    if fmt is ResponseFormat.JSON:
        return RenderedTranscript(formats.to_json(transcript), "application/json")
    if fmt is ResponseFormat.VERBOSE_JSON:
        body = formats.to_verbose_json(
            transcript,
            task=request.task,
            include_words=TimestampGranularity.WORD in request.granularities,
            include_segments=TimestampGranularity.SEGMENT in request.granularities,
        )
        return RenderedTranscript(body, "application/json")
    text = {
        ResponseFormat.TEXT: formats.to_text,
        ResponseFormat.SRT: formats.to_srt,
        ResponseFormat.VTT: formats.to_vtt,
    }[fmt](transcript)
    return RenderedTranscript(text, formats.TEXT_MEDIA_TYPES[fmt])
