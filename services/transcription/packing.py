"""Packing speech from many requests into 30 s windows, and splitting the results back.

Whisper's encoder always pays for a full 30 s window, however little speech is in it. So
the engine batches *work items* (at most one window of one request's speech each, found
by VAD), packs items that decode alike into shared windows with a short silence between
them, and after decoding hands every word back to the item whose audio it came from (that
half is `splitting.py`).

Everything here is plain data and arithmetic (no model), so it is unit-tested directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from services.transcription.domain import SAMPLE_RATE, DecodeOptions, Segment, Waveform
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
    logprobs: bool = False
    """Its segments get per-token log-probabilities (`include[]=logprobs`)."""

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

    Speech that fits one item is one item. Longer speech becomes one item per *run* (clips
    that touch: VAD split a sentence at a short pause), and the packer fills windows with
    them, several runs of one request to a window: so no item, hence no window, ends inside
    a sentence, and windows still come out nearly full (measured on a 20-minute recording:
    45 windows against 53 when items were consecutive runs joined up to the fill limit).
    A run longer than the fill limit is cut at the clip boundary before it. Several clips
    fill an item only up to `SHARED_WINDOW_SAMPLES`: Whisper drops an utterance ending at
    the window's very edge (measured on long recordings: whole sentences lost in items of
    29+ s, cut mid-sentence).
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
    if not bounded:
        return []
    if len(bounded) == 1 or _length(bounded) <= fill_limit:
        return [_make_item(audio, bounded, decode, word_timestamps)]
    items: list[WorkItem] = []
    held: list[tuple[int, int]] = []
    for clip in bounded:
        run_ends = bool(held) and clip[0] > held[-1][1]
        if held and (run_ends or _length(held) + clip[1] - clip[0] > fill_limit):
            items.append(_make_item(audio, held, decode, word_timestamps))
            held = []
        held.append(clip)
    items.append(_make_item(audio, held, decode, word_timestamps))
    return items


def _length(clips: Sequence[tuple[int, int]]) -> int:
    return sum(end - start for start, end in clips)


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
