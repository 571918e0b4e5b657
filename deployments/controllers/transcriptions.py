"""`POST /v1/audio/transcriptions` and `POST /v1/audio/translations`, as OpenAI defines them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse, Response

from deployments.dependencies import TranscriptionServiceDep
from services.transcription.models import ResponseFormat, Task, TimestampGranularity
from services.transcription.service import RenderedTranscript

router = APIRouter(prefix="/v1/audio", tags=["audio"])

FileField = Annotated[
    UploadFile, File(description="The audio file (flac, mp3, mp4, m4a, ogg, wav, webm...).")
]
ModelField = Annotated[str, Form(description="`whisper-1` or the served model id.")]
PromptField = Annotated[str | None, Form(description="Text to guide the model's style.")]
FormatField = Annotated[ResponseFormat, Form()]
TemperatureField = Annotated[float, Form(description="Sampling temperature, 0 to 1.")]
# The official client sends one `timestamp_granularities[]` field per value; without the
# alias FastAPI silently reads nothing. The bracket-less spelling (curl users) works too.
GranularitiesField = Annotated[
    list[TimestampGranularity] | None, Form(alias="timestamp_granularities[]")
]
PlainGranularitiesField = Annotated[
    list[TimestampGranularity] | None, Form(alias="timestamp_granularities")
]


def _response(rendered: RenderedTranscript) -> Response:
    if isinstance(rendered.content, dict):
        return JSONResponse(rendered.content)
    return Response(rendered.content, media_type=rendered.media_type)


@router.post("/transcriptions", summary="Transcribe audio into the input language")
async def create_transcription(
    service: TranscriptionServiceDep,
    file: FileField,
    model: ModelField,
    language: Annotated[str | None, Form(description="ISO-639-1 code; detected if absent.")] = None,
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
        granularities=[*(timestamp_granularities or []), *(timestamp_granularities_plain or [])],
    )
    return _response(await service.transcribe(file.file, file.size, request))


@router.post("/translations", summary="Translate audio into English text")
async def create_translation(
    service: TranscriptionServiceDep,
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
    return _response(await service.transcribe(file.file, file.size, request))
