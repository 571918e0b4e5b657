"""One transcription request: OpenAI's form fields plus ours, validated once.

The HTTP edge reads it from the multipart form (`Annotated[TranscriptionRequest, Form()]`),
a job stores it as JSON (`model_dump(mode="json")`) and reads it back with
`model_validate`, and rendering reads the same object. Checks a schema cannot express say
what was got and what was expected, and raise the service's own 400 (so the message and
code are the API's, not pydantic's). Which models exist is known only at run time, so the
service checks `model` (`services/transcription/models.py`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from services.core.errors import InvalidRequestError
from services.transcription.domain import (
    DecodeOptions,
    ResponseFormat,
    Task,
    TimestampGranularity,
    TranscriptionOptions,
)
from services.transcription.languages import LANGUAGE_NAMES

OPENAI_MODEL_ALIAS = "whisper-1"
MAX_PROMPT_CHARS = 2000
DEFAULT_GRANULARITIES = [TimestampGranularity.SEGMENT]


class ModelNotFoundError(InvalidRequestError):
    default_code = "model_not_found"


class TranscriptionRequest(BaseModel):
    """What to transcribe and how to answer: the fields of every audio endpoint."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    model: str = Field(description="`whisper-1` or the served model id.")
    task: Task = Field(
        default=Task.TRANSCRIBE,
        description="`transcribe` or `translate` (into English). Read by `POST /v1/jobs`; "
        "the `/v1/audio` routes set it themselves.",
    )
    language: str | None = Field(
        default=None, description="ISO-639-1 code of the audio; detected if absent."
    )
    prompt: str | None = Field(
        default=None,
        description=f"Text to guide the model's style (at most {MAX_PROMPT_CHARS} characters).",
    )
    response_format: ResponseFormat = ResponseFormat.JSON
    temperature: float = Field(
        default=0.0,
        description="Sampling temperature, 0 to 1.",
        json_schema_extra={"minimum": 0.0, "maximum": 1.0},
    )
    # The official client sends one `timestamp_granularities[]` field per value; curl users
    # write the bracket-less name. Stored sorted, without repeats, `segment` if none given.
    timestamp_granularities: list[TimestampGranularity] = Field(
        default_factory=lambda: list(DEFAULT_GRANULARITIES),
        validation_alias=AliasChoices("timestamp_granularities[]", "timestamp_granularities"),
        description="`word` and/or `segment` timestamps in verbose_json (default `segment`).",
    )

    @field_validator("language", mode="after")
    @classmethod
    def _known_language(cls, language: str | None) -> str | None:
        if language is None:
            return None
        code = language.strip().lower() or None
        if code is not None and code not in LANGUAGE_NAMES:
            raise InvalidRequestError(
                f"Unknown language {code!r}; expected an ISO-639-1 code such as 'en' or 'de'.",
                param="language",
                code="invalid_language",
            )
        return code

    @field_validator("temperature", mode="after")
    @classmethod
    def _temperature_in_range(cls, temperature: float) -> float:
        if not 0.0 <= temperature <= 1.0:
            raise InvalidRequestError(
                f"temperature must be between 0 and 1, got {temperature:g}.", param="temperature"
            )
        return temperature

    @field_validator("prompt", mode="after")
    @classmethod
    def _prompt_fits(cls, prompt: str | None) -> str | None:
        if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidRequestError(
                f"The prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are allowed.",
                param="prompt",
            )
        return prompt or None

    @field_validator("timestamp_granularities", mode="after")
    @classmethod
    def _granularity_set(cls, wanted: list[TimestampGranularity]) -> list[TimestampGranularity]:
        return sorted(set(wanted)) or list(DEFAULT_GRANULARITIES)

    def for_route(self, task: Task, *, granularities: bool = True) -> TranscriptionRequest:
        """This request as the route that received it runs it: the route decides the task,
        a translation has no source language (Whisper detects it), and a route without
        `timestamp_granularities` (translations, as at OpenAI) uses the default."""
        update: dict[str, Any] = {"task": task}
        if task is Task.TRANSLATE:
            update["language"] = None
        if not granularities:
            update["timestamp_granularities"] = list(DEFAULT_GRANULARITIES)
        return self.model_copy(update=update)

    def rendered_as(
        self,
        response_format: ResponseFormat | None,
        granularities: list[TimestampGranularity] | None,
    ) -> TranscriptionRequest:
        """The same request answered in another format (a job's result read later)."""
        update: dict[str, Any] = {}
        if response_format is not None:
            update["response_format"] = response_format
        if granularities:
            update["timestamp_granularities"] = sorted(set(granularities))
        return self.model_copy(update=update)

    @property
    def wants_words(self) -> bool:
        return TimestampGranularity.WORD in self.timestamp_granularities

    @property
    def wants_segments(self) -> bool:
        return TimestampGranularity.SEGMENT in self.timestamp_granularities

    def decode_options(self) -> DecodeOptions:
        return DecodeOptions(
            task=self.task, language=self.language, prompt=self.prompt, temperature=self.temperature
        )

    def engine_options(self) -> TranscriptionOptions:
        """What the model runs with for an answer now: word timing only when it is shown."""
        words = self.response_format is ResponseFormat.VERBOSE_JSON and self.wants_words
        return TranscriptionOptions(decode=self.decode_options(), word_timestamps=words)

    def fingerprint(self, audio_sha256: str) -> str:
        """Identifies the same request for an Idempotency-Key: the audio and every field
        that changes the result. `model` is left out (`whisper-1` names the served one).
        The shape is fixed: keys stored before this model existed must still match."""
        fields = {
            "task": self.task.value,
            "language": self.language,
            "prompt": self.prompt,
            "temperature": self.temperature,
            "response_format": self.response_format.value,
            "timestamp_granularities": [g.value for g in self.timestamp_granularities],
        }
        canonical = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(f"{audio_sha256}|{canonical}".encode()).hexdigest()
