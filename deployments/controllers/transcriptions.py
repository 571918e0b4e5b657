"""`POST /v1/audio/transcriptions` and `POST /v1/audio/translations`, as OpenAI defines them."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from deployments.auth import require_transcriber
from deployments.controllers.forms import (
    TRANSCRIPT_RESPONSES,
    UPLOAD_ERRORS,
    FileField,
    RequestForm,
)
from deployments.dependencies import TranscriptionServiceDep
from deployments.limits import AudioAdmissionDep
from services.transcription.domain import Task
from services.transcription.formats import RenderedTranscript

router = APIRouter(prefix="/v1/audio", tags=["audio"], dependencies=[Depends(require_transcriber)])


def rendered_response(rendered: RenderedTranscript) -> Response:
    if isinstance(rendered.content, dict):
        return JSONResponse(rendered.content)
    return Response(rendered.content, media_type=rendered.media_type)


@router.post(
    "/transcriptions",
    summary="Transcribe audio into the input language",
    responses={**TRANSCRIPT_RESPONSES, **UPLOAD_ERRORS},
)
async def create_transcription(
    service: TranscriptionServiceDep,
    admit: AudioAdmissionDep,
    file: FileField,
    form: RequestForm,
) -> Response:
    request = form.for_route(Task.TRANSCRIBE)
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
