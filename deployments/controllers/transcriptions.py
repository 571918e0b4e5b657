"""`POST /v1/audio/transcriptions` and `POST /v1/audio/translations`, as OpenAI defines them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from deployments.auth import require_transcriber
from deployments.controllers.forms import (
    TRANSCRIPT_RESPONSES,
    UPLOAD_ERRORS,
    FileField,
    LanguageForm,
    RequestForm,
)
from deployments.controllers.transcript_events import sse_response
from deployments.dependencies import TranscriptionServiceDep
from deployments.errors import error_responses
from deployments.limits import AudioAdmissionDep
from services.transcription.domain import Task
from services.transcription.formats import RenderedTranscript, usage_of_seconds
from services.transcription.languages import language_name
from services.transcription.request import TranscriptionRequest
from services.transcription.request_speakers import MAX_REFERENCE_FIELD_BYTES
from services.transcription.responses import LanguageDetection, LanguageProbability

STREAMED_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        **TRANSCRIPT_RESPONSES[200],
        "content": {
            **TRANSCRIPT_RESPONSES[200]["content"],
            "text/event-stream": {
                "schema": {"type": "string"},
                "example": 'event: transcript.text.delta\ndata: {"type": '
                '"transcript.text.delta", "delta": "Hello"}\n\n',
            },
        },
    }
}
"""With `stream=true`, the 200 is a stream of OpenAI's transcript events."""

router = APIRouter(prefix="/v1/audio", tags=["audio"], dependencies=[Depends(require_transcriber)])


def rendered_response(rendered: RenderedTranscript) -> Response:
    if isinstance(rendered.content, dict):
        return JSONResponse(rendered.content)
    return Response(rendered.content, media_type=rendered.media_type)


@router.post(
    "/transcriptions",
    summary="Transcribe audio into the input language",
    description="With `stream=true` the answer is `text/event-stream`: "
    "`transcript.text.delta` events as each piece is final, then `transcript.text.done`; "
    "a failure after the stream started is an `error` event.",
    responses={**STREAMED_RESPONSES, **UPLOAD_ERRORS},
    # known_speaker_references[] are audio clips as data URLs: a text part may be this big
    # here (Starlette's default is 1 MiB); the request model holds every other field to
    # MAX_TEXT_FIELD_CHARS.
    form_limits={"max_part_size": MAX_REFERENCE_FIELD_BYTES},
)
async def create_transcription(
    service: TranscriptionServiceDep,
    admit: AudioAdmissionDep,
    file: FileField,
    form: RequestForm,
) -> Response:
    request = form.for_route(Task.TRANSCRIBE, live=True)
    if request.stream:
        return sse_response(await service.stream(file.file, request, admit=admit))
    return rendered_response(await service.transcribe(file.file, request, admit=admit))


@router.post(
    "/translations",
    summary="Translate audio into English text",
    description="`language` and `timestamp_granularities` do not apply here (as at OpenAI).",
    responses={**TRANSCRIPT_RESPONSES, **UPLOAD_ERRORS},
)
async def create_translation(
    service: TranscriptionServiceDep,
    admit: AudioAdmissionDep,
    file: FileField,
    form: RequestForm,
) -> Response:
    request = form.for_route(Task.TRANSLATE, granularities=False)
    return rendered_response(await service.transcribe(file.file, request, admit=admit))


@router.post(
    "/language",
    summary="Detect the spoken language (ours)",
    description="The most likely languages of the first 30 s of speech, with the model's "
    "probabilities (like whisper-asr-webservice's detect-language). Needs a multilingual "
    "model: an English-only one answers 400 `unsupported_model`.",
    responses=error_responses(400, 408, 413, 415, 503, 507),
)
async def detect_language(
    service: TranscriptionServiceDep,
    admit: AudioAdmissionDep,
    file: FileField,
    form: LanguageForm,
) -> LanguageDetection:
    request = TranscriptionRequest(model=form.model)
    ranked, duration_s = await service.detect_languages(file.file, request, admit=admit)
    top = [
        LanguageProbability(language=code, name=language_name(code), probability=round(p, 4))
        for code, p in ranked[: form.top]
    ]
    return LanguageDetection(
        language=top[0].language,
        probability=top[0].probability,
        languages=top,
        usage=usage_of_seconds(duration_s),
    )
