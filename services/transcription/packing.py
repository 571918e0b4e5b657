"""Packing speech from many requests into 30 s windows, and splitting the results back.

Whisper's encoder always pays for a full 30 s window, however little speech is in it. So
the engine batches *work items* (at most one window of one request's speech each, found
by VAD), packs items that decode alike into shared windows with a short silence between
them, and after decoding hands every word back to the item whose audio it came from.

Words are assigned by the midpoint of their timestamps, never by segment: a Whisper
segment can span two items in one window, and splitting by segment would leak one
caller's words into another's result.

Everything here is plain data and arithmetic (no model), so it is unit-tested directly.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from services.transcription.domain import (
    SAMPLE_RATE,
    DecodeOptions,
    Segment,
    Waveform,
    Word,
)
from services.transcription.silence import quietest_sample

WINDOW_SAMPLES = 30 * SAMPLE_RATE
"""Whisper's fixed input window."""

ITEM_GAP_SAMPLES = SAMPLE_RATE // 2
"""Silence placed between two items that share a window, so words do not run together."""

SHARED_WINDOW_SAMPLES = 28 * SAMPLE_RATE
"""Shared windows stop short of 30 s: Whisper often drops an utterance that ends right at the
window's edge (measured on the fixtures: whole callers lost at 30 s, none at 28 s)."""

LONG_CLIP_SEARCH_SAMPLES = 5 * SAMPLE_RATE
"""A speech run longer than a window is cut at its quietest instant in this much before the
window's end (shared silence code with the job tracker), not at the exact sample count."""

MISSING_TAIL_S = 1.5
"""An item whose words end this long before its speech does was cut short by the model."""


@dataclass(frozen=True)
class Piece:
    """A run of speech copied into an item: where it sits in the item and in the request."""

    item_offset: int
    source_start: int
    length: int


@dataclass
class WorkItem:
    """At most one window of one request's speech: the unit the batch queue weighs and packs."""

    speech: Waveform
    pieces: list[Piece]
    decode: DecodeOptions
    word_timestamps: bool = False
    abandoned: bool = False
    """Set when the caller went away: the item is dropped if it has not run yet."""
    request_key: int = 0
    """Which request the item belongs to, for the batch scheduler; 0 when untracked."""
    last_of_request: bool = False
    """Set on the request's last item: once it is queued, the request has fully arrived."""
    background: bool = False
    """Work of an asynchronous job: it runs after interactive work that is waiting."""

    @property
    def samples(self) -> int:
        return int(self.speech.shape[0])

    def piece_at(self, item_time_s: float, *, is_end: bool = False) -> Piece:
        """The piece holding this instant; an end time exactly on a cut stays in the earlier one."""
        sample = item_time_s * SAMPLE_RATE
        for piece in self.pieces:
            piece_end = piece.item_offset + piece.length
            if sample < piece_end or (is_end and sample <= piece_end):
                return piece
        return self.pieces[-1]

    def source_time(self, item_time_s: float, piece: Piece) -> float:
        """Map a time inside this item's speech to the request's own timeline via `piece`."""
        return (piece.source_start - piece.item_offset) / SAMPLE_RATE + item_time_s


ItemResult = list[Segment] | Exception
"""What the batch function returns per item: its segments in its request's timeline, or
why it failed."""


@dataclass(frozen=True)
class Placement:
    item: int
    window_offset: int


@dataclass
class Window:
    placements: list[Placement] = field(default_factory=list)
    samples: int = 0

    def room_for(self, item_samples: int) -> bool:
        if not self.placements:
            return item_samples <= WINDOW_SAMPLES
        return self.samples + ITEM_GAP_SAMPLES + item_samples <= SHARED_WINDOW_SAMPLES

    def add(self, item: int, item_samples: int) -> None:
        if self.placements:
            self.samples += ITEM_GAP_SAMPLES
        self.placements.append(Placement(item, self.samples))
        self.samples += item_samples


def split_into_items(
    clips: Sequence[tuple[int, int]],
    audio: Waveform,
    decode: DecodeOptions,
    *,
    word_timestamps: bool,
    max_samples: int = WINDOW_SAMPLES,
) -> list[WorkItem]:
    """Group one request's speech clips (start, end samples) into items of at most a window.

    Clips that touch (VAD split a sentence at a short pause) stay in one item where they
    can: an item that fills up ends at the last real pause, and what follows it starts the
    next item. Several clips fill an item only up to `SHARED_WINDOW_SAMPLES`: Whisper drops
    an utterance ending at the window's very edge (measured on long recordings: whole
    sentences lost in items of 29+ s, cut mid-sentence).
    """
    bounded: list[tuple[int, int]] = []
    search = min(LONG_CLIP_SEARCH_SAMPLES, max_samples // 2)
    for start, end in clips:
        cut = start
        while end - cut > max_samples:  # VAD rarely lets a run this long through
            limit = cut + max_samples
            quiet = quietest_sample(audio, limit - search, limit)
            bounded.append((cut, quiet))
            cut = quiet
        bounded.append((cut, end))
    fill_limit = min(max_samples, SHARED_WINDOW_SAMPLES)
    items: list[WorkItem] = []
    held: list[tuple[int, int]] = []
    for clip in bounded:
        if held and _length(held) + clip[1] - clip[0] > fill_limit:
            keep = _last_pause(held)
            items.append(_make_item(audio, held[:keep], decode, word_timestamps))
            held = held[keep:]
            if held and _length(held) + clip[1] - clip[0] > fill_limit:
                items.append(_make_item(audio, held, decode, word_timestamps))
                held = []
        held.append(clip)
    if held:
        items.append(_make_item(audio, held, decode, word_timestamps))
    return items


def _length(clips: Sequence[tuple[int, int]]) -> int:
    return sum(end - start for start, end in clips)


def _last_pause(clips: Sequence[tuple[int, int]]) -> int:
    """How many of `clips` to keep so the item ends at a pause, not inside a sentence."""
    for index in range(len(clips) - 1, 0, -1):
        if clips[index][0] > clips[index - 1][1]:
            return index
    return len(clips)


def _make_item(
    audio: Waveform, clips: Sequence[tuple[int, int]], decode: DecodeOptions, word_timestamps: bool
) -> WorkItem:
    pieces: list[Piece] = []
    offset = 0
    for start, end in clips:
        pieces.append(Piece(item_offset=offset, source_start=start, length=end - start))
        offset += end - start
    speech = np.concatenate([audio[p.source_start : p.source_start + p.length] for p in pieces])
    return WorkItem(speech=speech, pieces=pieces, decode=decode, word_timestamps=word_timestamps)


def group_by_decode(items: Sequence[WorkItem]) -> dict[DecodeOptions, list[int]]:
    """Indices of the items that may be decoded together, keyed by their decode options."""
    groups: dict[DecodeOptions, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.decode, []).append(index)
    return groups


def plan_windows(item_samples: Sequence[int], *, pack: bool) -> list[Window]:
    """Place items (given by length) into windows; every item lands whole in one window.

    With `pack`, first-fit decreasing: longest items first, each into the first window
    with room. Without it, one item per window, so output never depends on other traffic.
    """
    windows: list[Window] = []
    if not pack:
        for index, samples in enumerate(item_samples):
            window = Window()
            window.add(index, samples)
            windows.append(window)
        return windows
    order = sorted(range(len(item_samples)), key=lambda i: (-item_samples[i], i))
    for index in order:
        samples = item_samples[index]
        target = next((w for w in windows if w.room_for(samples)), None)
        if target is None:
            target = Window()
            windows.append(target)
        target.add(index, samples)
    return windows


def count_windows(items: Sequence[WorkItem], *, pack: bool = True) -> int:
    """How many windows a batch of items costs: the weight `@serve.batch` limits."""
    if not items:
        return 0
    if not pack:
        return len(items)
    total = 0
    for indices in group_by_decode(items).values():
        total += len(plan_windows([items[i].samples for i in indices], pack=True))
    return total


def window_fill(item_samples: Sequence[int], windows: Sequence[Window]) -> float:
    """Seconds of speech per 30 s window, averaged (a batching-quality metric)."""
    if not windows:
        return 0.0
    return sum(item_samples) / SAMPLE_RATE / len(windows)


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


def unheard_tail(item: WorkItem, segments: Sequence[Segment]) -> WorkItem | None:
    """The item's trailing pieces that none of its `segments` (request timeline) touch, as an
    item of their own; None when nothing worth redoing is missing.

    Only whole pieces count (a piece is a VAD clip): an item with nothing heard at all is
    silence or noise, not a cut-short output, and is left alone.
    """
    # Where the output ends: the last word's end, or without word timestamps the last
    # segment's end (a segment's midpoint would call the second half of a one-segment item
    # unheard and transcribe it twice).
    heard = [w.end for segment in segments for w in segment.words] or [
        segment.end for segment in segments
    ]
    if not heard:
        return None
    last_heard = max(heard) * SAMPLE_RATE
    first_unheard = next(
        (k for k, p in enumerate(item.pieces) if p.source_start > last_heard), len(item.pieces)
    )
    tail = item.pieces[first_unheard:]
    if not tail or sum(p.length for p in tail) < MISSING_TAIL_S * SAMPLE_RATE:
        return None
    offset = tail[0].item_offset
    moved = [replace(p, item_offset=p.item_offset - offset) for p in tail]
    return replace(item, speech=item.speech[offset:].copy(), pieces=moved)


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
