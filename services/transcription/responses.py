"""OpenAI's transcription response bodies as types: what `formats.py` builds and the API
declares (`json` and `verbose_json`; the text formats are plain strings)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from services.transcription.domain import Task


class DurationUsage(BaseModel):
    """OpenAI bills audio by duration; the same block tells clients what they sent."""

    type: Literal["duration"] = "duration"
    seconds: float


class TokenLogprobJSON(BaseModel):
    """One token's log-probability (`include[]=logprobs`), as OpenAI shapes it."""

    token: str
    logprob: float
    bytes: list[int]


class TranscriptionJSON(BaseModel):
    """`response_format=json`."""

    text: str
    logprobs: list[TokenLogprobJSON] | None = Field(
        default=None, description="With `include[]=logprobs`: every text token, in order."
    )
    usage: DurationUsage


class LanguageProbability(BaseModel):
    language: str = Field(description="ISO-639-1 code, e.g. `en`.")
    name: str = Field(description="The language's English name, e.g. `english`.")
    probability: float


class LanguageDetection(BaseModel):
    """`POST /v1/audio/language` (ours): the most likely languages of the first 30 s of
    speech, most likely first."""

    language: str = Field(description="The most likely language's ISO-639-1 code.")
    probability: float
    languages: list[LanguageProbability]
    usage: DurationUsage


class TranscriptionWord(BaseModel):
    word: str
    start: float
    end: float


class TranscriptionSegment(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionVerbose(BaseModel):
    """`response_format=verbose_json`: `segments` and `words` as `timestamp_granularities`
    asks (segments by default)."""

    task: Task
    language: str = Field(description="The language's English name, e.g. `english`.")
    duration: float
    text: str
    segments: list[TranscriptionSegment] | None = None
    words: list[TranscriptionWord] | None = None
    usage: DurationUsage
