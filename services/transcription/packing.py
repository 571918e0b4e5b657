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

ITEM_GAP_SAMPLES = SAMPLE_RATE // 5
"""Silence placed between two items that share a window, so words do not run together. Each
item already carries VAD's speech padding (up to 0.4 s) at both ends, so 0.2 s more keeps
about a second between two callers' speech (measured on a 20-minute job: no word given to
the wrong item, and 2 windows fewer than with a 0.5 s gap and a 28 s fill)."""

SHARED_WINDOW_SAMPLES = 29 * SAMPLE_RATE + SAMPLE_RATE // 2
"""Shared windows stop half a second short of 30 s: Whisper often drops an utterance that ends
right at the window's edge (measured on the fixtures: whole callers lost at 30 s). What it
still drops short of the edge, the engine decodes again (`splitting.cut_short`); measured on
a 20-minute job (tiny.en), 29.5 s costs 51 windows retries included against 54 at 28 s,
with no word lost (WER 0.071 against 0.076)."""

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
    queued_at: float = 0.0
    """`time.monotonic()` when it joined the batch queue (queue-wait metric); 0: unknown."""
    logprobs: bool = False
    """Its segments get per-token log-probabilities (`include[]=logprobs`)."""
    pack_key: object = None
    """Items with a key share windows only with items of the same key; None: with any item
    of their batch (`seal`)."""

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
    splitter = ItemSplitter(decode, word_timestamps=word_timestamps, max_samples=max_samples)
    items = [item for clip in clips for item in splitter.add(clip, audio)]
    return items + splitter.finish(audio)


class ItemSplitter:
    """`split_into_items` one clip at a time, for clips that arrive as VAD finds them: the
    same items, each handed out as soon as no later clip can change it. Until the speech
    passes the fill limit the whole request may still be one item, so nothing leaves before
    that; after it, an item leaves when the next clip starts a new run or would overflow it.
    `audio` must hold every sample up to the clips given so far."""

    def __init__(
        self, decode: DecodeOptions, *, word_timestamps: bool, max_samples: int = WINDOW_SAMPLES
    ) -> None:
        self._decode = decode
        self._words = word_timestamps
        self._max = max_samples
        self._search = min(LONG_CLIP_SEARCH_SAMPLES, max_samples // 2)
        self._fill = min(max_samples, SHARED_WINDOW_SAMPLES)
        self._bounded: list[tuple[int, int]] = []  # before the regime is known
        self._several = False
        self._held: list[tuple[int, int]] = []

    def add(self, clip: tuple[int, int], audio: Waveform) -> list[WorkItem]:
        out: list[WorkItem] = []
        for bounded in self._bound(clip, audio):
            if self._several:
                out += self._run(bounded, audio)
                continue
            self._bounded.append(bounded)
            if len(self._bounded) > 1 and _length(self._bounded) > self._fill:
                self._several = True
                for earlier in self._bounded:
                    out += self._run(earlier, audio)
                self._bounded = []
        return out

    def finish(self, audio: Waveform) -> list[WorkItem]:
        if not self._several:
            return [self._item(audio, self._bounded)] if self._bounded else []
        return [self._item(audio, self._held)] if self._held else []

    def _bound(self, clip: tuple[int, int], audio: Waveform) -> list[tuple[int, int]]:
        """A clip longer than an item, cut at its quietest instants (VAD rarely lets one
        this long through)."""
        start, end = clip
        out: list[tuple[int, int]] = []
        cut = start
        while end - cut > self._max:
            limit = cut + self._max
            quiet = quietest_sample(audio, limit - self._search, limit)
            out.append((cut, quiet))
            cut = quiet
        out.append((cut, end))
        return out

    def _run(self, clip: tuple[int, int], audio: Waveform) -> list[WorkItem]:
        held = self._held
        run_ends = bool(held) and clip[0] > held[-1][1]
        out: list[WorkItem] = []
        if held and (run_ends or _length(held) + clip[1] - clip[0] > self._fill):
            out.append(self._item(audio, held))
            self._held = []
        self._held.append(clip)
        return out

    def _item(self, audio: Waveform, clips: Sequence[tuple[int, int]]) -> WorkItem:
        return _make_item(audio, clips, self._decode, self._words)


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


def plan_items(items: Sequence[WorkItem], *, pack: bool) -> list[Window]:
    """`plan_windows` for items that may carry a `pack_key`: the items of one key are packed
    among themselves (in the order their keys first appear), the rest together; placements
    index into `items`."""
    groups: dict[object, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.pack_key, []).append(index)
    free = groups.pop(None, [])
    return [
        _reindexed(plan, indices, items)
        for indices in [*groups.values(), free]
        for plan in plan_windows([items[i].samples for i in indices], pack=pack)
    ]


def _reindexed(plan: Window, indices: Sequence[int], items: Sequence[WorkItem]) -> Window:
    """`plan`, planned for `items[i]` for i in `indices`, with its placements naming the
    items by their index into `items`."""
    window = Window()
    for placement in plan.placements:
        window.add(indices[placement.item], items[indices[placement.item]].samples)
    return window


def count_windows(items: Sequence[WorkItem], *, pack: bool = True) -> int:
    """How many windows a batch of items costs: the weight `@serve.batch` limits."""
    if not items:
        return 0
    if not pack:
        return len(items)
    return sum(
        len(plan_items([items[i] for i in indices], pack=True))
        for indices in group_by_decode(items).values()
    )


def seal(items: Sequence[WorkItem], key: object) -> None:
    """Key a request's items (`pack_key`) so they share windows only with each other, and so
    do the parts of them decoded again: run as one unit (`BatchCoalescer.submit`), their
    windows, hence their words, then depend on the request's audio alone, never on what
    else the replica was doing. A job's chunk decoded again after a crash comes out the
    same (cross-request packing had varied it); measured on the 20-minute job, 42 windows
    planned chunk by chunk against 41 for all its chunks at once."""
    for item in items:
        item.pack_key = key


def window_fill(item_samples: Sequence[int], windows: Sequence[Window]) -> float:
    """Seconds of speech per 30 s window, averaged (a batching-quality metric)."""
    if not windows:
        return 0.0
    return sum(item_samples) / SAMPLE_RATE / len(windows)


def windows_for(items: Sequence[WorkItem], indices: list[int], *, pack: bool) -> list[Window]:
    """Windows for just `items[i]` for i in `indices` (placements keep the indices into
    `items`): how the engine decodes a subset again."""
    subset = [items[i] for i in indices]
    return [_reindexed(plan, indices, items) for plan in plan_items(subset, pack=pack)]


def window_audio(items: Sequence[WorkItem], window: Window) -> Waveform:
    """The window's waveform: each placed item's speech at its offset, silence between."""
    audio = np.zeros(window.samples, dtype=np.float32)
    for placement in window.placements:
        speech = items[placement.item].speech
        audio[placement.window_offset : placement.window_offset + speech.shape[0]] = speech
    return audio


@dataclass
class RunStats:
    """What the last `run` did, for metrics."""

    windows: int = 0
    speech_s: float = 0.0
    retried: int = 0
    """Items decoded again: tails the model stopped short of, and items of a shared window
    that looped (decoded again alone)."""
    retry_windows: int = 0
    """The windows those took, on top of `windows`."""
    fallbacks: int = 0

    @property
    def fill_s(self) -> float:
        return self.speech_s / self.windows if self.windows else 0.0
