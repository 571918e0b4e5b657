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
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from services.core.errors import InvalidRequestError
from services.transcription.domain import (
    DecodeOptions,
    ResponseFormat,
    Task,
    TimestampGranularity,
    TranscriptionOptions,
)
from services.transcription.languages import LANGUAGE_NAMES
from services.transcription.request_options import (
    MAX_HOTWORDS_CHARS,
    ChunkingStrategy,
    fold_form,
    parse_chunking,
    vad_of,
)
from services.transcription.request_speakers import (
    MAX_SPEAKERS,
    NAMES_FIELD,
    REFERENCES_FIELD,
    check_field_sizes,
    check_speakers,
    reference_audio,
)

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

    stream: bool = Field(
        default=False,
        description="Answer with Server-Sent Events: `transcript.text.delta` as each piece is "
        "final, then `transcript.text.done` (transcriptions only).",
    )
    include: list[Literal["logprobs"]] = Field(
        default_factory=list,
        validation_alias=AliasChoices("include[]", "include"),
        description="`logprobs`: per-token log-probabilities in `json` answers and stream events.",
    )
    chunking_strategy: ChunkingStrategy | None = Field(
        default=None,
        description='`auto` or `{"type": "server_vad", "threshold", "prefix_padding_ms", '
        '"silence_duration_ms"}` (the Silero VAD that finds the speech); as bracketed fields '
        "or one JSON string.",
    )
    hotwords: str | None = Field(
        default=None,
        description="Ours (faster-whisper's `hotwords`): words or phrases the model should "
        f"expect, at most {MAX_HOTWORDS_CHARS} characters. OpenAI's `keywords[]` is taken "
        "as the same.",
    )

    num_speakers: int | None = Field(
        default=None,
        description=f"Ours, with `diarized_json`: how many people speak (1 to {MAX_SPEAKERS}), "
        "when known; found from the audio if absent.",
        json_schema_extra={"minimum": 1, "maximum": MAX_SPEAKERS},
    )
    known_speaker_names: list[str] = Field(
        default_factory=list,
        validation_alias=AliasChoices(f"{NAMES_FIELD}[]", NAMES_FIELD),
        description="With `diarized_json`: names for the speakers of "
        "`known_speaker_references[]`, in the same order.",
    )
    known_speaker_references: list[str] = Field(
        default_factory=list,
        validation_alias=AliasChoices(f"{REFERENCES_FIELD}[]", REFERENCES_FIELD),
        description="With `diarized_json`: 2 to 10 s of each known speaker's voice, as data "
        "URLs (`data:audio/wav;base64,...`); up to 8. Segments in a matching voice take the "
        "paired name.",
    )

    @model_validator(mode="before")
    @classmethod
    def _fold_form(cls, data: Any) -> Any:
        check_field_sizes(data)
        data = fold_form(data)
        if isinstance(data, dict) and not data.get("hotwords"):
            keywords = data.get("keywords[]", data.get("keywords"))
            if isinstance(keywords, list | tuple) and keywords:
                data = {**data, "hotwords": " ".join(str(k) for k in keywords)}
            elif isinstance(keywords, str) and keywords:
                data = {**data, "hotwords": keywords}
        return data

    @field_validator("chunking_strategy", mode="before")
    @classmethod
    def _chunking(cls, value: Any) -> Any:
        return parse_chunking(value)

    @field_validator("hotwords", mode="after")
    @classmethod
    def _hotwords_fit(cls, hotwords: str | None) -> str | None:
        hotwords = hotwords.strip() if hotwords else None
        if hotwords is not None and len(hotwords) > MAX_HOTWORDS_CHARS:
            raise InvalidRequestError(
                f"hotwords has {len(hotwords)} characters; at most {MAX_HOTWORDS_CHARS} "
                "are allowed.",
                param="hotwords",
            )
        return hotwords or None

    @field_validator("include", mode="after")
    @classmethod
    def _include_set(cls, include: list[Literal["logprobs"]]) -> list[Literal["logprobs"]]:
        return sorted(set(include))

    @field_validator("num_speakers", mode="after")
    @classmethod
    def _speaker_count(cls, num_speakers: int | None) -> int | None:
        if num_speakers is not None and not 1 <= num_speakers <= MAX_SPEAKERS:
            raise InvalidRequestError(
                f"num_speakers must be between 1 and {MAX_SPEAKERS}, got {num_speakers}.",
                param="num_speakers",
            )
        return num_speakers

    @model_validator(mode="after")
    def _consistent(self) -> TranscriptionRequest:
        if self.response_format is ResponseFormat.DIARIZED_JSON:
            self.known_speaker_names = check_speakers(
                self.known_speaker_names, self.known_speaker_references
            )
        elif self.wants_speakers:
            raise InvalidRequestError(
                "num_speakers, known_speaker_names[] and known_speaker_references[] apply to "
                f"response_format=diarized_json only; response_format is "
                f"{self.response_format.value}.",
                param="response_format",
            )
        if self.stream and self.response_format not in (ResponseFormat.JSON, ResponseFormat.TEXT):
            raise InvalidRequestError(
                "stream=true answers with transcript.text events; response_format must be "
                f"json or text, got {self.response_format.value}.",
                param="response_format",
            )
        if (
            self.wants_logprobs
            and not self.stream
            and self.response_format is not ResponseFormat.JSON
        ):
            raise InvalidRequestError(
                "include[]=logprobs is returned in json answers and stream events only; "
                f"response_format is {self.response_format.value}.",
                param="include",
            )
        return self

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

    def for_route(
        self, task: Task, *, granularities: bool = True, live: bool = False, job: bool = False
    ) -> TranscriptionRequest:
        """This request as the route that received it runs it: the route decides the task,
        a translation has no source language (Whisper detects it), and a route without
        `timestamp_granularities` (translations, as at OpenAI) uses the default. Only a
        `live` route (synchronous transcription) streams and returns log-probabilities;
        it and a `job` label speakers (`diarized_json`, with `num_speakers` and known
        speakers on both)."""
        if not live and self.stream:
            raise InvalidRequestError(
                "stream=true is supported on POST /v1/audio/transcriptions only (a job's "
                "progress streams from GET /v1/jobs/{id}/events).",
                param="stream",
            )
        if not live and self.include:
            raise InvalidRequestError(
                "include[]=logprobs is supported on POST /v1/audio/transcriptions only.",
                param="include",
            )
        if self.response_format is ResponseFormat.DIARIZED_JSON:
            if task is Task.TRANSLATE:
                raise InvalidRequestError(
                    "response_format=diarized_json labels speakers of a transcription; "
                    "translations do not support it.",
                    param="response_format",
                )
            if not live and not job:
                raise InvalidRequestError(
                    "response_format=diarized_json is supported on POST "
                    "/v1/audio/transcriptions and POST /v1/jobs only (not yet on batches).",
                    param="response_format",
                )
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
    def wants_logprobs(self) -> bool:
        return "logprobs" in self.include

    @property
    def wants_words(self) -> bool:
        return TimestampGranularity.WORD in self.timestamp_granularities

    @property
    def wants_speakers(self) -> bool:
        """Speaker fields were given (they need `diarized_json`)."""
        return bool(
            self.num_speakers is not None
            or self.known_speaker_names
            or self.known_speaker_references
        )

    @property
    def diarized(self) -> bool:
        return self.response_format is ResponseFormat.DIARIZED_JSON

    def speaker_references(self) -> list[tuple[str, bytes]]:
        """Each known speaker's name and the encoded audio of their reference."""
        return [
            (name, reference_audio(url, index))
            for index, (name, url) in enumerate(
                zip(self.known_speaker_names, self.known_speaker_references, strict=True)
            )
        ]

    @property
    def wants_segments(self) -> bool:
        return TimestampGranularity.SEGMENT in self.timestamp_granularities

    def decode_options(self) -> DecodeOptions:
        return DecodeOptions(
            task=self.task,
            language=self.language,
            prompt=self.prompt,
            temperature=self.temperature,
            hotwords=self.hotwords,
        )

    def engine_options(self) -> TranscriptionOptions:
        """What the model runs with for an answer now: word timing only when it is shown."""
        # Speaker labels go word by word: diarized_json needs word timing too.
        words = self.diarized or (
            self.response_format is ResponseFormat.VERBOSE_JSON and self.wants_words
        )
        return TranscriptionOptions(
            decode=self.decode_options(),
            word_timestamps=words,
            vad=vad_of(self.chunking_strategy),
            logprobs=self.wants_logprobs,
        )

    def fingerprint(self, audio_sha256: str) -> str:
        """Identifies the same request for an Idempotency-Key: the audio and every field
        that changes the result. `model` is left out (`whisper-1` names the served one).
        The shape is fixed: keys stored before this model existed must still match."""
        fields: dict[str, Any] = {
            "task": self.task.value,
            "language": self.language,
            "prompt": self.prompt,
            "temperature": self.temperature,
            "response_format": self.response_format.value,
            "timestamp_granularities": [g.value for g in self.timestamp_granularities],
        }
        # Newer fields count only when given, so keys stored before them still match.
        if self.hotwords:
            fields["hotwords"] = self.hotwords
        if self.chunking_strategy is not None:
            strategy = self.chunking_strategy
            fields["chunking_strategy"] = (
                strategy if isinstance(strategy, str) else strategy.model_dump(mode="json")
            )
        if self.include:
            fields["include"] = list(self.include)
        if self.wants_speakers:
            fields["num_speakers"] = self.num_speakers
            fields["known_speakers"] = [
                [name, hashlib.sha256(url.encode()).hexdigest()]
                for name, url in zip(
                    self.known_speaker_names, self.known_speaker_references, strict=True
                )
            ]
        canonical = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(f"{audio_sha256}|{canonical}".encode()).hexdigest()
