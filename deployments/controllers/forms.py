"""What every audio endpoint takes, declared once: the file and the request's fields.

The fields are one model, `TranscriptionRequest`, read from the multipart form by FastAPI
(`Form()` on a model), so the routes, the jobs table and `/docs` share one definition.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import File, Form, UploadFile
from pydantic import BaseModel, Field

from deployments.errors import error_responses
from services.transcription.request import TranscriptionRequest
from services.transcription.responses import TranscriptionJSON, TranscriptionVerbose

FileField = Annotated[
    UploadFile, File(description="The audio file (flac, mp3, mp4, m4a, ogg, wav, webm...).")
]
RequestForm = Annotated[TranscriptionRequest, Form()]


class LanguageFields(BaseModel):
    """The fields of `POST /v1/audio/language` besides the file."""

    model: str = Field(default="whisper-1", description="`whisper-1` or the served model id.")
    top: int = Field(default=5, ge=1, le=100, description="How many languages to list.")


LanguageForm = Annotated[LanguageFields, Form()]

TRANSCRIPT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The transcript in the requested `response_format`: an object for "
        "`json` and `verbose_json`, text for `text`, `srt` and `vtt`.",
        "model": TranscriptionJSON | TranscriptionVerbose,
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/x-subrip": {"schema": {"type": "string"}},
            "text/vtt": {"schema": {"type": "string"}},
        },
    },
}
"""The `responses=` of every route that answers with a transcript."""

UPLOAD_ERRORS = error_responses(400, 408, 413, 415, 503, 507)
