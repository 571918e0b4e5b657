"""One request's way out of the batch: its item results joined into its transcript."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from services.transcription.domain import Segment, Transcript, TranscriptionOptions
from services.transcription.packing import ItemResult, WorkItem


@dataclass
class PreparedAudio:
    """One request after VAD and language detection, ready for the batch queue."""

    items: list[WorkItem]
    language: str
    language_probability: float
    duration_s: float
    options: TranscriptionOptions


def assemble(prepared: PreparedAudio, results: Sequence[ItemResult]) -> Transcript:
    """Join one request's item results into its transcript; the first failure is raised."""
    segments: list[Segment] = []
    for result in results:
        if isinstance(result, Exception):
            raise result
        segments.extend(result)
    duration = prepared.duration_s
    keep_words = prepared.options.word_timestamps

    def clamp(t: float) -> float:
        return round(min(max(t, 0.0), duration), 3)

    final: list[Segment] = []
    for index, segment in enumerate(sorted(segments, key=lambda s: s.start)):
        words = [replace(w, start=clamp(w.start), end=clamp(w.end)) for w in segment.words]
        start, end = clamp(segment.start), clamp(segment.end)
        final.append(
            replace(
                segment,
                id=index,
                seek=int(start * 100),
                start=start,
                end=max(start, end),
                words=words if keep_words else [],
            )
        )
    return Transcript(
        text="".join(s.text for s in final).strip(),
        language=prepared.language,
        language_probability=prepared.language_probability,
        duration_s=duration,
        segments=final,
    )
