"""Render a transcript in OpenAI's response formats: json, text, srt, verbose_json, vtt."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.core.errors import InvalidRequestError
from services.transcription.domain import (
    ResponseFormat,
    Segment,
    Task,
    TokenLogprob,
    Transcript,
)
from services.transcription.languages import language_name
from services.transcription.request import TranscriptionRequest
from services.transcription.responses import (
    DurationUsage,
    TokenLogprobJSON,
    TranscriptionJSON,
    TranscriptionSegment,
    TranscriptionVerbose,
    TranscriptionWord,
)

TEXT_MEDIA_TYPES: dict[ResponseFormat, str] = {
    ResponseFormat.TEXT: "text/plain; charset=utf-8",
    ResponseFormat.SRT: "application/x-subrip; charset=utf-8",
    ResponseFormat.VTT: "text/vtt; charset=utf-8",
}


@dataclass(frozen=True)
class RenderedTranscript:
    content: dict[str, Any] | str
    media_type: str


def render(transcript: Transcript, request: TranscriptionRequest) -> RenderedTranscript:
    """The body the request asked for: a JSON object, or text with its media type."""
    fmt = request.response_format
    if fmt is ResponseFormat.JSON:
        return RenderedTranscript(
            to_json(transcript, logprobs=request.wants_logprobs), "application/json"
        )
    if fmt is ResponseFormat.VERBOSE_JSON:
        body = to_verbose_json(
            transcript,
            task=request.task,
            include_words=request.wants_words,
            include_segments=request.wants_segments,
        )
        return RenderedTranscript(body, "application/json")
    if fmt is ResponseFormat.DIARIZED_JSON:
        # Speaker turns come from the diarizer beside the model, on synchronous requests
        # only (the transcription service renders those itself).
        raise InvalidRequestError(
            "response_format=diarized_json is answered on POST /v1/audio/transcriptions only.",
            param="response_format",
        )
    text = {ResponseFormat.TEXT: to_text, ResponseFormat.SRT: to_srt, ResponseFormat.VTT: to_vtt}
    return RenderedTranscript(text[fmt](transcript), TEXT_MEDIA_TYPES[fmt])


def usage(transcript: Transcript) -> DurationUsage:
    return usage_of_seconds(transcript.duration_s)


def usage_of_seconds(seconds: float) -> DurationUsage:
    return DurationUsage(seconds=round(seconds, 3))


def to_json(transcript: Transcript, *, logprobs: bool = False) -> dict[str, Any]:
    body = TranscriptionJSON(
        text=transcript.text,
        logprobs=logprobs_json(lp for s in transcript.segments for lp in s.logprobs)
        if logprobs
        else None,
        usage=usage(transcript),
    )
    return body.model_dump(mode="json", exclude_none=True)


def logprobs_json(logprobs: Iterable[TokenLogprob]) -> list[TokenLogprobJSON]:
    return [TokenLogprobJSON(token=lp.token, logprob=lp.logprob, bytes=lp.bytes) for lp in logprobs]


def to_verbose_json(
    transcript: Transcript, *, task: Task, include_words: bool, include_segments: bool = True
) -> dict[str, Any]:
    body = TranscriptionVerbose(
        task=task,
        language=language_name(transcript.language),
        duration=round(transcript.duration_s, 3),
        text=transcript.text,
        segments=[_segment(s) for s in transcript.segments] if include_segments else None,
        words=[
            TranscriptionWord(word=w.word.strip(), start=w.start, end=w.end)
            for w in transcript.words
        ]
        if include_words
        else None,
        usage=usage(transcript),
    )
    return body.model_dump(mode="json", exclude_none=True)


def _segment(segment: Segment) -> TranscriptionSegment:
    return TranscriptionSegment(
        id=segment.id,
        seek=segment.seek,
        start=segment.start,
        end=segment.end,
        text=segment.text,
        tokens=segment.tokens,
        temperature=segment.temperature,
        avg_logprob=segment.avg_logprob,
        compression_ratio=segment.compression_ratio,
        no_speech_prob=segment.no_speech_prob,
    )


def to_text(transcript: Transcript) -> str:
    return transcript.text + "\n" if transcript.text else ""


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cues(transcript: Transcript) -> list[tuple[float, float, str]]:
    cues = []
    for segment in transcript.segments:
        text = segment.text.strip()
        if text:
            # Subtitle parsers reject a cue that ends before it starts.
            cues.append((segment.start, max(segment.end, segment.start + 0.001), text))
    return cues


def to_srt(transcript: Transcript) -> str:
    blocks = [
        f"{n}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n"
        for n, (start, end, text) in enumerate(_cues(transcript), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    blocks = [
        f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text}\n"
        for start, end, text in _cues(transcript)
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)
