"""Who spoke when: VAD, window embeddings, clustering, optional names from references.

`Diarizer.diarize` turns 16 kHz mono float32 audio into `Turn`s (start, end, speaker).
Speakers are `A`, `B`, ... by first appearance, or the name of the enrolled reference
(`known_speaker_references`) whose voice matches the cluster. The result is deterministic
for a given input (fixed k-means seed), so a job that is diarized again after a restart gets
the same labels. Overlapping speech is not modelled: each instant has at most one speaker.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from services.diarization.clustering import centroids, cluster
from services.diarization.encoder import (
    HOP,
    SAMPLE_RATE,
    WINDOW_FRAMES,
    SpeakerEncoder,
    mel_frames,
    normalise_volume,
)
from services.transcription.domain import Word

STEP_FRAMES = 40
"""A window every 0.4 s; each labels the 0.4 s around its centre."""
MIN_FRAMES = 30
"""Speech shorter than 0.3 s carries too little voice to embed; it takes its neighbour's label."""
REFERENCE_MIN_SIMILARITY = 0.7
"""A cluster takes a reference's name only if their voices are at least this close (cosine)."""
MIN_REFERENCE_S, MAX_REFERENCE_S, MAX_REFERENCES = 2.0, 10.0, 8

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Turn:
    start: float
    end: float
    speaker: str


def turns_to_rows(turns: Sequence[Turn]) -> list[dict[str, Any]]:
    """Turns as plain rows (`start`, `end`, `speaker`): what the deployment returns, a job
    stores and a bulk row carries."""
    return [{"start": t.start, "end": t.end, "speaker": t.speaker} for t in turns]


def turns_of_rows(rows: Sequence[Mapping[str, Any]]) -> list[Turn]:
    return [Turn(float(r["start"]), float(r["end"]), str(r["speaker"])) for r in rows]


MAX_DIARIZED_S = 3600.0
"""Most audio one diarization takes. Clustering holds every pair of 0.4 s windows: an hour
of speech (9,000 windows) peaked at 840 MB here, two hours would take about 3 GB and four
12 GB, enough to have a shared replica or worker killed for memory. Jobs refuse longer
`diarized_json` audio at submission; bulk keeps the transcript and says why."""


@dataclass(frozen=True)
class Reference:
    name: str
    audio: FloatArray


class Diarizer:
    def __init__(self, encoder: SpeakerEncoder | None = None) -> None:
        self._encoder = encoder or SpeakerEncoder()

    def diarize(
        self,
        audio: FloatArray,
        num_speakers: int | None = None,
        references: Sequence[Reference] = (),
        speech: Sequence[tuple[int, int]] | None = None,
    ) -> list[Turn]:
        """Speaker turns over `audio`; `speech` is VAD spans in samples (found if None)."""
        spans = list(speech) if speech is not None else speech_spans(audio)
        centres, embeddings = self._windows(audio, spans)
        if not centres:
            return []
        voices = (
            np.stack([self.embed_reference(r.audio) for r in references]) if references else None
        )
        labels = cluster(
            embeddings, num_speakers, voices, voice_min_similarity=REFERENCE_MIN_SIMILARITY
        )
        names = self._names(embeddings, labels, references, voices)
        return _turns(spans, centres, [names[int(k)] for k in labels])

    def embed_reference(self, audio: FloatArray) -> FloatArray:
        """One unit vector for a whole enrolment clip (mean of its windows)."""
        _, embeddings = self._windows(audio, speech_spans(audio) or [(0, audio.size)])
        if embeddings.shape[0] == 0:
            _, embeddings = self._windows(audio, [(0, audio.size)])
        mean = embeddings.mean(axis=0)
        unit: FloatArray = (mean / max(float(np.linalg.norm(mean)), 1e-10)).astype(np.float32)
        return unit

    def _windows(
        self, audio: FloatArray, spans: Sequence[tuple[int, int]]
    ) -> tuple[list[float], FloatArray]:
        full: list[FloatArray] = []
        full_centres: list[float] = []
        short: list[tuple[float, FloatArray]] = []
        for start, end in spans:
            mels = mel_frames(normalise_volume(audio[start:end]))
            frames = mels.shape[0]
            offset = start / SAMPLE_RATE
            if frames < MIN_FRAMES:
                continue
            if frames < WINDOW_FRAMES:
                short.append((offset + frames * HOP / SAMPLE_RATE / 2, mels))
                continue
            starts = list(range(0, frames - WINDOW_FRAMES + 1, STEP_FRAMES))
            if starts[-1] != frames - WINDOW_FRAMES:
                starts.append(frames - WINDOW_FRAMES)
            for first in starts:
                full.append(mels[first : first + WINDOW_FRAMES])
                full_centres.append(offset + (first + WINDOW_FRAMES / 2) * HOP / SAMPLE_RATE)
        vectors: list[FloatArray] = []
        centres: list[float] = []
        if full:
            vectors.append(self._encoder.embed(np.stack(full)))
            centres.extend(full_centres)
        for centre, mels in short:
            vectors.append(self._encoder.embed(mels[None]))
            centres.append(centre)
        if not vectors:
            return [], np.zeros((0, 256), dtype=np.float32)
        embeddings = np.concatenate(vectors)
        order = np.argsort(np.asarray(centres), kind="stable")
        return [centres[i] for i in order], embeddings[order]

    def _names(
        self,
        embeddings: FloatArray,
        labels: npt.NDArray[np.int64],
        references: Sequence[Reference],
        voices: FloatArray | None,
    ) -> list[str]:
        count = int(labels.max()) + 1
        names: list[str | None] = [None] * count
        if references and voices is not None:
            from scipy.optimize import linear_sum_assignment

            similarity = centroids(embeddings, labels) @ voices.T
            rows, cols = linear_sum_assignment(-similarity)
            for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
                if similarity[row, col] >= REFERENCE_MIN_SIMILARITY:
                    names[row] = references[col].name
        letters = iter(letter_names())
        return [name if name is not None else next(letters) for name in names]


def letter_names() -> list[str]:
    """A, B, ..., Z, AA, AB, ...: more than enough labels."""
    single = list(string.ascii_uppercase)
    return single + [a + b for a in single for b in single]


def speech_spans(audio: FloatArray) -> list[tuple[int, int]]:
    """Silero VAD (faster-whisper's copy) speech spans in samples."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(min_silence_duration_ms=250, speech_pad_ms=60)
    return [(int(s["start"]), int(s["end"])) for s in get_speech_timestamps(audio, options)]


def _turns(
    spans: Sequence[tuple[int, int]], centres: Sequence[float], speakers: Sequence[str]
) -> list[Turn]:
    """Each span is split between the windows whose centres fall in it, at midpoints."""
    turns: list[Turn] = []
    centre_array = np.asarray(centres)
    for start_sample, end_sample in spans:
        start, end = start_sample / SAMPLE_RATE, end_sample / SAMPLE_RATE
        inside = np.flatnonzero((centre_array >= start) & (centre_array <= end))
        if inside.size == 0:
            nearest = int(np.argmin(np.abs(centre_array - (start + end) / 2)))
            _append(turns, Turn(start, end, speakers[nearest]))
            continue
        cursor = start
        for position, index in enumerate(inside.tolist()):
            last = position == inside.size - 1
            stop = end if last else (centres[index] + centres[int(inside[position + 1])]) / 2
            _append(turns, Turn(cursor, stop, speakers[index]))
            cursor = stop
    return turns


def _append(turns: list[Turn], turn: Turn) -> None:
    if turns and turns[-1].speaker == turn.speaker and turn.start - turns[-1].end < 0.5:
        turns[-1] = Turn(turns[-1].start, turn.end, turn.speaker)
    else:
        turns.append(turn)


def speaker_at(turns: Sequence[Turn], start: float, end: float) -> str | None:
    """The speaker at the midpoint of [start, end); the nearest turn if it falls in a pause."""
    if not turns:
        return None
    middle = (start + end) / 2
    best: Turn = turns[0]
    best_distance = float("inf")
    for turn in turns:
        if turn.start <= middle < turn.end:
            return turn.speaker
        distance = min(abs(middle - turn.start), abs(middle - turn.end))
        if distance < best_distance:
            best, best_distance = turn, distance
    return best.speaker


@dataclass(frozen=True)
class SpeakerSegment:
    """A run of consecutive words of one speaker (a `diarized_json` segment)."""

    start: float
    end: float
    speaker: str
    text: str


def speaker_runs(words: Sequence[Word], turns: Sequence[Turn]) -> list[tuple[str, list[Word]]]:
    """Each word takes the speaker at its midpoint ("A" when there are no turns); a run is
    consecutive words of one speaker. (`speaker_segments` here, and the bulk rows' segments.)"""
    runs: list[tuple[str, list[Word]]] = []
    for word in words:
        speaker = speaker_at(turns, word.start, word.end) or "A"
        if runs and runs[-1][0] == speaker:
            runs[-1][1].append(word)
        else:
            runs.append((speaker, [word]))
    return runs


def speaker_segments(words: Sequence[Word], turns: Sequence[Turn]) -> list[SpeakerSegment]:
    """Each word takes the speaker at its midpoint; a segment is a run of one speaker."""
    return [
        SpeakerSegment(
            start=group[0].start,
            end=group[-1].end,
            speaker=speaker,
            text="".join(w.word for w in group).strip(),
        )
        for speaker, group in speaker_runs(words, turns)
    ]
