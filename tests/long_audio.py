"""Long recordings made at test time from the committed clips, and how to score them.

A recording is read sentences (the English fixtures, their silence trimmed) with pauses
between them, plus one sentence centred on each given mark (where a fixed-length chunker
would cut). With `no_pause_s`, the clips within that many seconds of each mark are joined
back to back (a 50 ms join), so there is no pause to cut at near the mark.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np

from services.transcription.audio import decode_audio
from services.transcription.domain import SAMPLE_RATE
from tests.audio_variants import write_flac
from tests.conftest import ENGLISH, Clip, normalise

JOIN_S = 0.05
BOUNDARY_CLIPS = [c for c in ENGLISH if 4.0 <= c.duration_s <= 6.5]
"""One-sentence clips that fit around a mark."""


@dataclass(frozen=True)
class Placed:
    clip: Clip
    start_s: float
    end_s: float
    at_mark: bool


@dataclass
class Recording:
    duration_s: float
    placed: list[Placed]

    @property
    def text(self) -> str:
        return " ".join(p.clip.text for p in self.placed)

    def samples(self, block_s: float = 60.0) -> Iterator[np.ndarray]:
        """The waveform in blocks, so that even two hours never sit in memory at once."""
        block = int(block_s * SAMPLE_RATE)
        total = int(self.duration_s * SAMPLE_RATE)
        order = sorted(self.placed, key=lambda p: p.start_s)
        for lo in range(0, total, block):
            hi = min(total, lo + block)
            out = np.zeros(hi - lo, dtype=np.float32)
            for p in order:
                audio = trimmed(p.clip)
                start = int(p.start_s * SAMPLE_RATE)
                end = start + audio.shape[0]
                if end <= lo or start >= hi:
                    continue
                a, b = max(start, lo), min(end, hi)
                out[a - lo : b - lo] = audio[a - start : b - start]
            yield out

    def write_flac(self, path: Path) -> Path:
        write_flac(self.samples(), str(path))
        return path


_TRIMMED: dict[Path, np.ndarray] = {}


def trimmed(clip: Clip) -> np.ndarray:
    """The clip without its leading and trailing silence (by VAD, as the service hears it)."""
    if clip.path not in _TRIMMED:
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        audio = decode_audio(clip.path, max_duration_s=600)
        spans = get_speech_timestamps(
            audio, VadOptions(min_silence_duration_ms=100, speech_pad_ms=30)
        )
        _TRIMMED[clip.path] = audio[spans[0]["start"] : spans[-1]["end"]].copy()
    return _TRIMMED[clip.path]


def _length(clip: Clip) -> float:
    return trimmed(clip).shape[0] / SAMPLE_RATE


def build(
    duration_s: float,
    marks: Sequence[float],
    *,
    gap_s: float = 1.0,
    no_pause_s: float | Sequence[float] = 0.0,
    fillers: Sequence[Clip] = ENGLISH,
) -> Recording:
    """Sentences separated by `gap_s`, one centred on each mark (see the module docstring).

    `no_pause_s` may be given per mark, to have both kinds of mark in one recording.
    """
    widths = [no_pause_s] * len(marks) if isinstance(no_pause_s, int | float) else no_pause_s
    anchored: list[list[Placed]] = []
    for k, (mark, width) in enumerate(zip(marks, widths, strict=True)):
        clip = BOUNDARY_CLIPS[k % len(BOUNDARY_CLIPS)]
        start = mark - _length(clip) / 2
        block = [Placed(clip, start, start + _length(clip), True)]
        if width:
            cycle = 0
            while block[0].start_s > mark - width:  # back to back, leftwards
                c = fillers[(k * 7 + cycle) % len(fillers)]
                end = block[0].start_s - JOIN_S
                block.insert(0, Placed(c, end - _length(c), end, False))
                cycle += 1
            while block[-1].end_s < mark + width:  # and rightwards
                c = fillers[(k * 7 + cycle) % len(fillers)]
                start = block[-1].end_s + JOIN_S
                block.append(Placed(c, start, start + _length(c), False))
                cycle += 1
        anchored.append(block)
    placed: list[Placed] = []
    cursor, turn = 0.5, 0
    for block in [*anchored, []]:
        limit = block[0].start_s - gap_s if block else duration_s - 0.5
        while fillers:
            c = fillers[turn % len(fillers)]
            if cursor + _length(c) > limit:
                break
            placed.append(Placed(c, cursor, cursor + _length(c), False))
            cursor += _length(c) + gap_s
            turn += 1
        if block:
            placed.extend(block)
            cursor = block[-1].end_s + gap_s
    return Recording(duration_s, placed)


@dataclass(frozen=True)
class Heard:
    placed: Placed
    retention: float
    doubled: list[str]
    """Words heard more often than spoken (a duplicate at a seam shows here)."""


def score(recording: Recording, words: Sequence[dict[str, float | str]]) -> list[Heard]:
    """Per placed sentence: the share of its words the transcript kept, and doubled words.

    A transcript word belongs to the sentence its midpoint falls in (± 0.3 s).
    """
    out = []
    for p in recording.placed:
        heard = [
            str(w["word"])
            for w in words
            if p.start_s - 0.3 <= (float(w["start"]) + float(w["end"])) / 2 <= p.end_s + 0.3
        ]
        reference, hypothesis = normalise(p.clip.text), normalise(" ".join(heard))
        measured = jiwer.process_words(reference, hypothesis or "<empty>")
        retention = measured.hits / len(reference.split())
        extra = Counter(hypothesis.split()) - Counter(reference.split())
        doubled = [w for w in extra if w in reference.split()]
        out.append(Heard(p, retention, doubled))
    return out
