"""One transcript from the chunks of a long recording, on one continuous timeline.

Chunks cut at a pause meet end to end: nothing is dropped, times are only shifted. Chunks
cut through speech overlap by a few seconds, and both transcribe the overlap; each word in it
is kept once, from the chunk where it lies further from the edge. Concretely the seam is put
in a gap between words near the overlap's middle (both chunks hear the audio there well), the
left chunk keeps the words whose midpoint is before the seam and the right chunk the rest, and
a word both chunks still claim at the seam (their timestamps disagree) is kept once.

Guarantees: segments and words in time order, never overlapping across a seam, all within
[0, duration].
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from services.transcription.domain import Segment, Transcript, Word
from services.transcription.silence import pauses_in

SAME_WORD_S = 0.6
"""Two copies of one word at a seam are at most this far apart (midpoints)."""


@dataclass(frozen=True)
class ChunkTranscript:
    """A chunk's transcript (in the chunk's own time) and where the chunk lies in the recording."""

    start_s: float
    end_s: float
    transcript: Transcript


def merge_chunks(chunks: Sequence[ChunkTranscript], duration_s: float) -> Transcript:
    shifted = [_shift(c.transcript.segments, c.start_s) for c in chunks]
    seams = [
        _seam(shifted[k], shifted[k + 1], chunks[k], chunks[k + 1]) for k in range(len(chunks) - 1)
    ]
    kept: list[list[Segment]] = []
    for k, segments in enumerate(shifted):
        lo = seams[k - 1] if k > 0 else 0.0
        hi = seams[k] if k < len(seams) else duration_s
        overlaps_left = k > 0 and chunks[k].start_s < chunks[k - 1].end_s
        overlaps_right = k < len(seams) and chunks[k + 1].start_s < chunks[k].end_s
        keep_from = lo if overlaps_left else float("-inf")
        keep_to = hi if overlaps_right else float("inf")
        kept.append(
            [s for seg in segments if (s := _keep(seg, keep_from, keep_to, lo, hi)) is not None]
        )
    for k in range(len(seams)):
        if chunks[k + 1].start_s < chunks[k].end_s:
            _drop_double_at_seam(kept[k], kept[k + 1], chunks[k].end_s, chunks[k + 1].start_s)
    segments = _in_order([seg for part in kept for seg in part if seg.text.strip() or seg.words])
    spoken = [c.transcript for c in chunks if c.transcript.segments] or [
        c.transcript for c in chunks
    ]
    first = spoken[0] if spoken else None
    return Transcript(
        text="".join(s.text for s in segments).strip(),
        language=first.language if first else "en",
        language_probability=first.language_probability if first else 0.0,
        duration_s=duration_s,
        segments=segments,
    )


def _shift(segments: Sequence[Segment], offset: float) -> list[Segment]:
    def word(w: Word) -> Word:
        return replace(w, start=w.start + offset, end=w.end + offset)

    return [
        replace(s, start=s.start + offset, end=s.end + offset, words=[word(w) for w in s.words])
        for s in sorted(segments, key=lambda s: s.start)
    ]


def _mid(word: Word) -> float:
    return (word.start + word.end) / 2


def _seam(
    left: list[Segment], right: list[Segment], a: ChunkTranscript, b: ChunkTranscript
) -> float:
    """Where the timeline passes from chunk `a` to chunk `b`."""
    if b.start_s >= a.end_s:
        return a.end_s  # cut at a pause
    centre = (b.start_s + a.end_s) / 2
    # Only the middle half of the overlap: near either edge one chunk hears words cut off.
    quarter = (a.end_s - b.start_s) / 4
    lo, hi = round((centre - quarter) * 1000), round((centre + quarter) * 1000)
    heard = [
        (round(w.start * 1000), round(w.end * 1000)) for seg in (*left, *right) for w in seg.words
    ]
    gaps = pauses_in(heard, lo, hi)
    if not gaps:
        return centre
    target = round(centre * 1000)

    def place(gap: tuple[int, int]) -> int:
        margin = min(50, (gap[1] - gap[0]) // 2)
        return min(max(target, gap[0] + margin), gap[1] - margin)

    return min((place(g) for g in gaps), key=lambda t: abs(t - target)) / 1000


def _keep(seg: Segment, keep_from: float, keep_to: float, lo: float, hi: float) -> Segment | None:
    """The part of `seg` this chunk keeps: words with their midpoint in [keep_from, keep_to),
    everything clamped into [lo, hi]."""

    def clamp(t: float) -> float:
        return round(min(max(t, lo), hi), 3)

    if not seg.words:
        if not keep_from <= (seg.start + seg.end) / 2 < keep_to:
            return None
        return replace(seg, start=clamp(seg.start), end=clamp(seg.end))
    words = [
        replace(w, start=clamp(w.start), end=clamp(w.end))
        for w in seg.words
        if keep_from <= _mid(w) < keep_to
    ]
    if not words:
        return None
    if len(words) == len(seg.words):
        return replace(seg, start=clamp(seg.start), end=clamp(seg.end), words=words)
    return _with_words(seg, words)


def _with_words(seg: Segment, words: list[Word]) -> Segment:
    """`seg` reduced to `words` (its tokens are no longer known: left empty)."""
    return replace(
        seg,
        start=words[0].start,
        end=words[-1].end,
        text="".join(w.word for w in words),
        tokens=[],
        words=words,
    )


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def _drop_double_at_seam(
    left: list[Segment], right: list[Segment], left_end: float, right_start: float
) -> None:
    """A word both chunks kept at the seam (timestamps disagree) stays once: in the chunk
    where it lies further from the edge."""
    while left and right and left[-1].words and right[0].words:
        last, first = left[-1].words[-1], right[0].words[0]
        if _norm(last.word) != _norm(first.word) or abs(_mid(last) - _mid(first)) > SAME_WORD_S:
            return
        if left_end - _mid(last) >= _mid(first) - right_start:
            _remove(right, 0, 0)
        else:
            _remove(left, len(left) - 1, -1)


def _remove(segments: list[Segment], index: int, position: int) -> None:
    seg = segments[index]
    words = [w for k, w in enumerate(seg.words) if k != position % len(seg.words)]
    if words:
        segments[index] = _with_words(seg, words)
    else:
        del segments[index]


def _in_order(segments: list[Segment]) -> list[Segment]:
    """Number the segments and make times never run backwards (they may touch, not cross)."""
    out: list[Segment] = []
    clock = 0.0
    for index, seg in enumerate(sorted(segments, key=lambda s: s.start)):
        start = max(seg.start, clock)
        words = []
        for w in seg.words:
            w_start = max(w.start, clock)
            w_end = max(w.end, w_start)
            words.append(replace(w, start=round(w_start, 3), end=round(w_end, 3)))
            clock = w_end
        end = max(seg.end, start, clock)
        clock = end
        start = round(start, 3)
        out.append(
            replace(
                seg, id=index, seek=int(start * 100), start=start, end=round(end, 3), words=words
            )
        )
    return out
