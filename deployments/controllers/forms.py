"""The OpenAI multipart fields, declared once for every endpoint that takes audio."""

from __future__ import annotations

from typing import Annotated

from fastapi import File, Form, UploadFile

from services.transcription.domain import ResponseFormat, TimestampGranularity

FileField = Annotated[
    UploadFile, File(description="The audio file (flac, mp3, mp4, m4a, ogg, wav, webm...).")
]
ModelField = Annotated[str, Form(description="`whisper-1` or the served model id.")]
LanguageField = Annotated[str | None, Form(description="ISO-639-1 code; detected if absent.")]
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


def granularities(
    bracketed: list[TimestampGranularity] | None, plain: list[TimestampGranularity] | None
) -> list[TimestampGranularity]:
    return [*(bracketed or []), *(plain or [])]
