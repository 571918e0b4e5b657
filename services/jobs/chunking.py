"""Cutting long audio into chunks for the model, and estimating how many there will be.

A chunk ends at the middle of the longest pause (VAD) of at least `min_pause_s` in the
`cut_search_s` before its nominal end (`chunk_s` after its start), and the next chunk
starts there. With no such pause, the chunk ends at its nominal end and the next one starts
`overlap_s` earlier; `merge_chunks` keeps each word of the overlap once. A recording that
ends less than `cut_search_s` past a chunk's nominal end ends in that chunk (no slivers).
Every boundary is stored as it is decided, as the pair (end of chunk k, start of chunk
k + 1) flattened into `jobs.cut_points`: equal for a cut at a pause, apart by the overlap
otherwise. A retry reuses them, so its stored chunks still line up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from services.core.settings import JobsSettings
from services.transcription.domain import SAMPLE_RATE, Waveform
from services.transcription.silence import Span, pause_cut

CHUNKS_IN_FLIGHT = 2
"""Chunks of one job with the model at once: one decoding while the next is prepared."""

BLOCK_S = 2.0
"""Decode in small blocks: the tracker holds one chunk plus the search window, never a file."""


def find_speech(audio: Waveform) -> list[Span]:
    # Imported on first use: the tracker needs the VAD, not the model, and only for long audio.
    from services.transcription.whisper_adapter import speech_spans

    return speech_spans(audio)


def boundaries(cut_points: list[float]) -> list[tuple[float, float]]:
    pairs = len(cut_points) // 2
    return [(cut_points[2 * k], cut_points[2 * k + 1]) for k in range(pairs)]


def samples(seconds: float) -> int:
    return round(seconds * SAMPLE_RATE)


@dataclass(frozen=True)
class ChunkPlan:
    chunk: int
    search: int
    min_pause: int
    overlap: int

    @classmethod
    def of(cls, chunk_s: float, settings: JobsSettings) -> ChunkPlan:
        """`chunk_s` is the job's own (a resumed job keeps the one it started with)."""
        # Searching more than half a chunk back could make chunks arbitrarily short.
        search_s = min(settings.cut_search_s, chunk_s / 2)
        return cls(
            chunk=samples(chunk_s),
            search=samples(search_s),
            min_pause=samples(settings.min_pause_s),
            overlap=samples(min(settings.overlap_s, search_s)),
        )

    def chunks_for(self, seconds: float | None) -> int:
        """A lower bound on the chunks `seconds` of audio need (one when unknown).

        Every chunk but the last advances at most `chunk`, the last holds at most `chunk +
        search`: so the estimate only ever grows, and only when the declared length was low.
        """
        if not seconds or seconds <= 0:
            return 1
        return max(1, math.ceil((samples(seconds) - self.search) / self.chunk))


@dataclass
class Chunk:
    index: int
    start: int
    end: int
    next_start: int | None
    audio: Waveform
    decided: bool
    """The boundary was chosen now, not read back from the job's stored cut points."""

    def without_audio(self) -> Chunk:
        """The chunk's place only, to keep while the model has its audio."""
        return replace(self, audio=np.zeros(0, dtype=np.float32))

    @property
    def last(self) -> bool:
        return self.next_start is None

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE

    @property
    def next_start_s(self) -> float:
        assert self.next_start is not None
        return self.next_start / SAMPLE_RATE


class Chunker:
    """Cuts a stream of decoded blocks into chunks, holding at most a chunk and two windows."""

    def __init__(
        self,
        blocks: Iterator[Waveform],
        plan: ChunkPlan,
        *,
        known: list[tuple[float, float]],
        speech: Callable[[Waveform], list[Span]] = find_speech,
    ) -> None:
        self._blocks = blocks
        self._plan = plan
        self._known = [(samples(end), samples(start)) for end, start in known]
        self._speech = speech
        self._held: Waveform = np.zeros(0, dtype=np.float32)
        self._held_start = 0
        self._ended = False
        self._start = 0
        self._index = 0
        self._finished = False

    @property
    def decoded_s(self) -> float:
        return (self._held_start + int(self._held.shape[0])) / SAMPLE_RATE

    def _fill(self, until: int) -> int:
        """Decode until sample `until` is held or the audio ends; the end of what is held."""
        parts = [self._held]
        have = self._held_start + int(self._held.shape[0])
        while have < until and not self._ended:
            block = next(self._blocks, None)
            if block is None:
                self._ended = True
                break
            parts.append(block)
            have += int(block.shape[0])
        if len(parts) > 1:
            self._held = np.concatenate(parts)
        return have

    def next(self) -> Chunk | None:
        if self._finished:
            return None
        plan, start, index = self._plan, self._start, self._index
        nominal = start + plan.chunk
        decided = index >= len(self._known)
        next_start: int | None
        if not decided:
            end, next_start = self._known[index]
            have = self._fill(end + 1)
            if have <= end:  # shorter than when the boundary was chosen: cannot happen
                end, next_start = have, None
        else:
            have = self._fill(nominal + plan.search + 1)
            if self._ended and have <= nominal + plan.search:
                end, next_start = have, None
            else:
                end, next_start = self._cut(start, nominal)
        base = self._held_start
        audio = self._held[start - base : end - base]
        chunk = Chunk(index, start, end, next_start, audio, decided)
        if next_start is None:
            self._finished = True  # the decoder ran to its end: it checked the file was whole
        else:
            self._held = self._held[next_start - base :]
            self._held_start = next_start
            self._start, self._index = next_start, index + 1
        return chunk

    def _cut(self, start: int, nominal: int) -> tuple[int, int]:
        """(end of this chunk, start of the next) for a chunk from `start`."""
        plan = self._plan
        low = max(start + 1, nominal - plan.search)
        base = self._held_start
        spans = self._speech(self._held[low - base : nominal - base])
        cut = pause_cut([(s + low, e + low) for s, e in spans], low, nominal, plan.min_pause)
        if cut is not None:
            return cut, cut
        return nominal, max(start + 1, nominal - plan.overlap)


def estimated_chunks(duration_s: float | None, chunk_s: float, settings: JobsSettings) -> int:
    """What `progress.total` starts at: a lower bound, from the declared duration."""
    return ChunkPlan.of(chunk_s, settings).chunks_for(duration_s)
