"""Handing a shared window's output back to its items, and finding what the model missed.

Words are assigned by the midpoint of their timestamps, never by segment: a Whisper
segment can span two items in one window, and splitting by segment would leak one
caller's words into another's result. Plain data and arithmetic (no model), unit-tested
directly.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from services.transcription.domain import SAMPLE_RATE, Segment, Word
from services.transcription.packing import ItemResult, Placement, Window, WorkItem

COMPRESSION_RATIO_THRESHOLD = 2.4
"""Whisper's sign of a repetition loop: the window's text compresses more than this."""

MISSING_TAIL_S = 1.5
"""An item whose words end this long before its speech does was cut short by the model."""


def _coverage(
    window: Window, items: Sequence[WorkItem], segment: Segment
) -> list[tuple[Placement, float]]:
    """(placement, end time) of what each part of `segment` covers: per word, or whole."""
    if segment.words:
        return [(_placement_of(window, items, (w.start + w.end) / 2), w.end) for w in segment.words]
    return [(_placement_of(window, items, (segment.start + segment.end) / 2), segment.end)]


def spans_callers(window: Window, items: Sequence[WorkItem], segments: Sequence[Segment]) -> bool:
    """Whether a segment of a shared window reaches into the audio of two callers.

    Only then are word timestamps needed to split it; otherwise each segment belongs
    wholly to the caller its timestamps fall in.
    """
    if len(window.placements) < 2:
        return False
    regions = [
        (p.window_offset / SAMPLE_RATE, (p.window_offset + items[p.item].samples) / SAMPLE_RATE)
        for p in window.placements
    ]
    for segment in segments:
        touched = sum(1 for start, end in regions if segment.start < end and segment.end > start)
        if touched > 1:
            return True
    return False


def cut_short(window: Window, items: Sequence[WorkItem], segments: Sequence[Segment]) -> list[int]:
    """Items of a shared window that the model stopped transcribing early.

    Whisper sometimes ends its output before the last utterance of a window; alone, the
    next window would pick it up, but a packed window has no next window. The engine
    decodes these items again on their own.
    """
    if len(window.placements) < 2:
        return []
    covered = {p.item: p.window_offset / SAMPLE_RATE for p in window.placements}
    for segment in segments:
        for placement, end in _coverage(window, items, segment):
            covered[placement.item] = max(covered[placement.item], end)
    short = []
    for placement in window.placements:
        end_s = (placement.window_offset + items[placement.item].samples) / SAMPLE_RATE
        if end_s - covered[placement.item] > MISSING_TAIL_S:
            short.append(placement.item)
    return short


def _last_heard(segments: Sequence[Segment]) -> float | None:
    """Where the output ends (request seconds): the last word's end, or without word
    timestamps the last segment's end (a segment's midpoint would call the second half of a
    one-segment item unheard and transcribe it twice); None when nothing was heard."""
    heard = [w.end for segment in segments for w in segment.words] or [
        segment.end for segment in segments
    ]
    return max(heard) if heard else None


def _pieces_from(item: WorkItem, first: int) -> WorkItem:
    """The item's pieces from `first` on, as an item of their own (same request timeline)."""
    if first == 0:
        return item
    offset = item.pieces[first].item_offset
    moved = [replace(p, item_offset=p.item_offset - offset) for p in item.pieces[first:]]
    return replace(item, speech=item.speech[offset:].copy(), pieces=moved)


def unheard_tail(item: WorkItem, segments: Sequence[Segment]) -> WorkItem | None:
    """The item's trailing pieces that none of its `segments` (request timeline) touch, as an
    item of their own; None when nothing worth redoing is missing.

    Only whole pieces count (a piece is a VAD clip): an item with nothing heard at all is
    silence or noise, not a cut-short output, and is left alone.
    """
    heard_s = _last_heard(segments)
    if heard_s is None:
        return None
    last_heard = heard_s * SAMPLE_RATE
    first_unheard = next(
        (k for k, p in enumerate(item.pieces) if p.source_start > last_heard), len(item.pieces)
    )
    tail = item.pieces[first_unheard:]
    if not tail or sum(p.length for p in tail) < MISSING_TAIL_S * SAMPLE_RATE:
        return None
    return _pieces_from(item, first_unheard)


@dataclass
class Tail:
    """What of an item is decoded again: `item`, its last pieces (or all of it), and `kept`,
    the segments of the first decoding that end before those pieces start."""

    item: WorkItem
    kept: list[Segment]

    def merged(self, first: ItemResult, again: ItemResult) -> ItemResult:
        """The item's result: the kept segments, then the tail's; the first result when the
        tail failed, heard nothing, or heard fewer words than the segments it replaces
        (never fewer words for having tried again)."""
        if isinstance(again, Exception) or not any(s.text.strip() for s in again):
            return first
        joined = [*self.kept, *again]
        if not isinstance(first, Exception) and _word_count(joined) < _word_count(first):
            return first
        return joined


def _word_count(segments: Sequence[Segment]) -> int:
    return sum(len(s.words) if s.words else len(s.text.split()) for s in segments)


def tail_of(item: WorkItem, segments: Sequence[Segment], *, cut_short: bool) -> Tail | None:
    """What of `item` to decode again, given what its first decoding heard; None: nothing.

    The pieces after the last heard word when they are long enough (`unheard_tail`), the
    segments heard kept. For an item of a shared window that the model stopped short of
    (`cut_short`) but whose unheard part starts inside a piece, decoding resumes at the start
    of that piece (or earlier, so that no kept segment reaches into what is decoded again),
    and only the whole segments before it are kept: the whole item when nothing was heard
    or the model stopped inside the item's first piece.
    """
    tail = unheard_tail(item, segments)
    if tail is not None:
        return Tail(tail, list(segments))
    if not cut_short:
        return None
    heard_s = _last_heard(segments)
    first = 0
    if heard_s is not None:
        starts = [p.source_start / SAMPLE_RATE for p in item.pieces]
        first = max((k for k, start in enumerate(starts) if start <= heard_s), default=0)
        while first > 0 and any(s.start < starts[first] < s.end for s in segments):
            first -= 1
        kept = [s for s in segments if s.end <= starts[first]] if first else []
    else:
        kept = []
    return Tail(_pieces_from(item, first), kept)


def tails_of(
    items: Sequence[WorkItem], results: Sequence[ItemResult], short: set[int]
) -> dict[int, Tail]:
    """What of each item to decode again (`tail_of`; `short`: the indices of items cut short
    in a shared window), by index; failed items aside."""
    tails: dict[int, Tail] = {}
    for index, result in enumerate(results):
        if isinstance(result, Exception):
            continue
        tail = tail_of(items[index], result, cut_short=index in short)
        if tail is not None:
            tails[index] = tail
    return tails


def split_window(
    window: Window,
    items: Sequence[WorkItem],
    segments: Sequence[Segment],
    *,
    tokenize: Callable[[str], list[int]],
) -> dict[int, list[Segment]]:
    """Give every item of `window` its own segments, in the item's request timeline.

    `segments` carry window-local times. With word timestamps, each word goes to the item
    its midpoint falls in (or the nearest one, for a word in a gap); a segment spanning two
    items becomes one segment per item. A segment without words must lie within one item
    (`spans_callers` decides when words are needed) and goes there whole.
    """
    out: dict[int, list[Segment]] = {p.item: [] for p in window.placements}
    for segment in segments:
        if not segment.words:
            placement = _placement_of(window, items, (segment.start + segment.end) / 2)
            if segment.text.strip():
                out[placement.item].append(_move_segment(segment, placement, items[placement.item]))
            continue
        runs: list[tuple[Placement, list[Word]]] = []
        for word in segment.words:
            placement = _placement_of(window, items, (word.start + word.end) / 2)
            if runs and runs[-1][0] is placement:
                runs[-1][1].append(word)
            else:
                runs.append((placement, [word]))
        for placement, words in runs:
            item = items[placement.item]
            if len(runs) == 1:
                out[placement.item].append(_move_segment(segment, placement, item))
            else:
                out[placement.item].append(_cut_segment(segment, words, placement, item, tokenize))
    return out


def _placement_of(window: Window, items: Sequence[WorkItem], time_s: float) -> Placement:
    sample = time_s * SAMPLE_RATE

    def distance(p: Placement) -> float:
        start, end = p.window_offset, p.window_offset + items[p.item].samples
        return 0.0 if start <= sample < end else min(abs(sample - start), abs(sample - end))

    return min(window.placements, key=distance)


def _move_word(word: Word, placement: Placement, item: WorkItem) -> Word:
    offset_s = placement.window_offset / SAMPLE_RATE
    start, end = word.start - offset_s, word.end - offset_s
    # Both ends go through the piece the midpoint is in, so a word never straddles a cut.
    piece = item.piece_at((start + end) / 2)
    return replace(
        word,
        start=round(item.source_time(start, piece), 3),
        end=round(item.source_time(end, piece), 3),
    )


def _move_segment(segment: Segment, placement: Placement, item: WorkItem) -> Segment:
    words = [_move_word(w, placement, item) for w in segment.words]
    if words:
        start, end = words[0].start, words[-1].end
    else:
        offset_s = placement.window_offset / SAMPLE_RATE
        local_start, local_end = segment.start - offset_s, segment.end - offset_s
        start = item.source_time(local_start, item.piece_at(local_start))
        end = item.source_time(local_end, item.piece_at(local_end, is_end=True))
    return replace(segment, start=round(start, 3), end=round(end, 3), words=words)


def _cut_segment(
    segment: Segment,
    words: list[Word],
    placement: Placement,
    item: WorkItem,
    tokenize: Callable[[str], list[int]],
) -> Segment:
    moved = [_move_word(w, placement, item) for w in words]
    text = "".join(w.word for w in words)
    return replace(
        segment,
        start=moved[0].start,
        end=moved[-1].end,
        text=text,
        tokens=tokenize(text),
        compression_ratio=compression_ratio(text),
        words=moved,
    )


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def text_ratio(segments: Sequence[Segment]) -> float:
    """The compression ratio of the segments' text (high: Whisper repeating itself)."""
    return compression_ratio("".join(segment.text for segment in segments))


def repetitive(segments: Sequence[Segment]) -> bool:
    return text_ratio(segments) > COMPRESSION_RATIO_THRESHOLD
