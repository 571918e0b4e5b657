"""`POST /v1/audio/transcriptions` and `POST /v1/audio/translations`, as OpenAI defines them."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from deployments.controllers.forms import (
    FileField,
    FormatField,
    GranularitiesField,
    LanguageField,
    ModelField,
    PlainGranularitiesField,
    PromptField,
    TemperatureField,
    granularities,
)
from deployments.dependencies import TranscriptionServiceDep
from deployments.limits import AudioAdmissionDep
from services.transcription.domain import ResponseFormat, Task
from services.transcription.service import RenderedTranscript

router = APIRouter(prefix="/v1/audio", tags=["audio"])


def rendered_response(rendered: RenderedTranscript) -> Response:
    if isinstance(rendered.content, dict):
        return JSONResponse(rendered.content)
    return Response(rendered.content, media_type=rendered.media_type)


@router.post("/transcriptions", summary="Transcribe audio into the input language")
async def create_transcription(
    service: TranscriptionServiceDep,
    admit: AudioAdmissionDep,
    file: FileField,
    model: ModelField,
    language: LanguageField = None,
    prompt: PromptField = None,
    response_format: FormatField = ResponseFormat.JSON,
    temperature: TemperatureField = 0.0,
    timestamp_granularities: GranularitiesField = None,
    timestamp_granularities_plain: PlainGranularitiesField = None,
) -> Response:
    request = service.build_request(
        task=Task.TRANSCRIBE,
        model=model,
        language=language,
        prompt=prompt,
        response_format=response_format,
        temperature=temperature,
        granularities=granularities(timestamp_granularities, timestamp_granularities_plain),
    )
    return rendered_response(await service.transcribe(file.file, file.size, request, admit=admit))


@router.post("/translations", summary="Translate audio into English text")
async def create_translation(
    service: TranscriptionServiceDep,
    admit: AudioAdmissionDep,
    file: FileField,
    model: ModelField,
    prompt: PromptField = None,
    response_format: FormatField = ResponseFormat.JSON,
    temperature: TemperatureField = 0.0,
) -> Response:
    request = service.build_request(
        task=Task.TRANSLATE,
        model=model,
        language=None,
        prompt=prompt,
        response_format=response_format,
        temperature=temperature,
        granularities=[],
    )
    return rendered_response(await service.transcribe(file.file, file.size, request, admit=admit))
