"""The project's own transcription types: what goes into the engine and what comes out.

Plain dataclasses: they cross process boundaries (Ray pickles them) and never expose a
faster-whisper object.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16_000
"""Every decoded waveform in the project is 16 kHz mono float32."""

Waveform = npt.NDArray[np.float32]


class Task(StrEnum):
    TRANSCRIBE = "transcribe"
    TRANSLATE = "translate"


class ResponseFormat(StrEnum):
    JSON = "json"
    TEXT = "text"
    SRT = "srt"
    VERBOSE_JSON = "verbose_json"
    VTT = "vtt"
    DIARIZED_JSON = "diarized_json"


class TimestampGranularity(StrEnum):
    WORD = "word"
    SEGMENT = "segment"


@dataclass(frozen=True)
class DecodeOptions:
    """What the model decodes with. Requests that differ here never share a window."""

    task: Task = Task.TRANSCRIBE
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    hotwords: str | None = None
    """faster-whisper's vocabulary hints, put before the prompt in the decoder's context."""


@dataclass(frozen=True)
class VadSettings:
    """How the Silero VAD finds speech (`chunking_strategy=server_vad`); the defaults are the
    engine's own (`auto`)."""

    threshold: float = 0.5
    speech_pad_ms: int = 400
    min_silence_duration_ms: int = 160


@dataclass(frozen=True)
class TranscriptionOptions:
    decode: DecodeOptions = DecodeOptions()
    word_timestamps: bool = False
    vad: VadSettings = VadSettings()
    logprobs: bool = False
    """Per-token log-probabilities on every segment (`include[]=logprobs`)."""


@dataclass
class TokenLogprob:
    """One text token of a segment and the model's log-probability of it."""

    token: str
    logprob: float
    bytes: list[int]


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass
class Segment:
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
    words: list[Word] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Transcript:
    text: str
    language: str
    language_probability: float
    duration_s: float
    segments: list[Segment]

    @property
    def words(self) -> list[Word]:
        return [word for segment in self.segments for word in segment.words]


def transcript_to_dict(transcript: Transcript) -> dict[str, object]:
    """A JSON-ready form, for result rows and caches."""
    return asdict(transcript)


def transcript_from_dict(data: dict[str, Any]) -> Transcript:
    segments = [
        Segment(
            **{
                **s,
                "words": [Word(**w) for w in s.get("words", [])],
                "logprobs": [TokenLogprob(**t) for t in s.get("logprobs", [])],
            }
        )
        for s in data["segments"]
    ]
    return Transcript(
        text=data["text"],
        language=data["language"],
        language_probability=data["language_probability"],
        duration_s=data["duration_s"],
        segments=segments,
    )
