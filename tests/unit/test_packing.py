"""The packing plan and the split back, on synthetic data (no model)."""

import numpy as np
import pytest

from services.transcription.domain import SAMPLE_RATE, DecodeOptions, Segment, Word
from services.transcription.packing import (
    ITEM_GAP_SAMPLES,
    WINDOW_SAMPLES,
    Piece,
    WorkItem,
    count_windows,
    group_by_decode,
    plan_items,
    plan_windows,
    seal,
    split_into_items,
)
from services.transcription.splitting import cut_short, spans_callers, split_window

SR = SAMPLE_RATE
EN = DecodeOptions(language="en")


def _item(
    seconds: float, decode: DecodeOptions = EN, pieces: list[Piece] | None = None
) -> WorkItem:
    samples = int(seconds * SR)
    return WorkItem(
        speech=np.zeros(samples, dtype=np.float32),
        pieces=pieces or [Piece(item_offset=0, source_start=0, length=samples)],
        decode=decode,
    )


def _seg(
    start: float, end: float, words: list[tuple[str, float, float]], text: str = ""
) -> Segment:
    return Segment(
        id=0, seek=0, start=start, end=end, tokens=[1],
        text=text or "".join(w for w, _, _ in words),
        temperature=0.0, avg_logprob=-0.1, compression_ratio=1.0, no_speech_prob=0.0,
        words=[Word(start=s, end=e, word=w, probability=0.9) for w, s, e in words],
    )  # fmt: skip


def test_split_into_items_keeps_each_item_within_a_window() -> None:
    audio = np.arange(100 * SR, dtype=np.float32)
    clips = [(0, 10 * SR), (12 * SR, 30 * SR), (31 * SR, 95 * SR)]  # the last is too long
    items = split_into_items(clips, audio, EN, word_timestamps=False)
    assert all(item.samples <= WINDOW_SAMPLES for item in items)
    # Every speech sample ends up in exactly one item, in order.
    copied = np.concatenate([item.speech for item in items])
    expected = np.concatenate([audio[s:e] for s, e in clips])
    assert np.array_equal(copied, expected)
    # Pieces map back to where the speech came from.
    for item in items:
        for piece in item.pieces:
            chunk = item.speech[piece.item_offset : piece.item_offset + piece.length]
            assert np.array_equal(
                chunk, audio[piece.source_start : piece.source_start + piece.length]
            )


def test_no_speech_gives_no_items() -> None:
    assert split_into_items([], np.zeros(SR, dtype=np.float32), EN, word_timestamps=False) == []


@pytest.mark.parametrize("pack", [True, False])
def test_every_item_lands_whole_in_exactly_one_window(pack: bool) -> None:
    lengths = [int(s * SR) for s in (6, 3, 29.9, 12, 8, 4.5, 30, 1)]
    windows = plan_windows(lengths, pack=pack)
    placed = sorted(p.item for w in windows for p in w.placements)
    assert placed == list(range(len(lengths)))
    for window in windows:
        assert window.samples <= WINDOW_SAMPLES
        ends = [p.window_offset + lengths[p.item] for p in window.placements]
        starts = [p.window_offset for p in window.placements]
        assert all(e + ITEM_GAP_SAMPLES <= s for e, s in zip(ends, starts[1:], strict=False))


def test_packing_fills_windows_and_can_be_turned_off() -> None:
    lengths = [6 * SR] * 10  # 60 s of speech
    assert len(plan_windows(lengths, pack=True)) == 3  # four 6 s items (+ gaps) per window
    assert len(plan_windows(lengths, pack=False)) == 10


def test_count_windows_weighs_a_batch_in_windows_per_decode_group() -> None:
    short = [_item(6) for _ in range(4)]
    german = [_item(6, DecodeOptions(language="de")) for _ in range(2)]
    assert count_windows(short) == 1
    assert count_windows(short + german) == 2
    assert count_windows(short, pack=False) == 4
    assert list(group_by_decode(short + german).values()) == [[0, 1, 2, 3], [4, 5]]


def test_keyed_items_share_windows_only_with_their_own_key() -> None:
    a, b, c, d = _item(6), _item(6), _item(6), _item(6)
    a.pack_key, b.pack_key = "one", "two"
    windows = plan_items([a, b, c, d], pack=True)
    assert [[p.item for p in w.placements] for w in windows] == [[0], [1], [2, 3]]
    assert count_windows([a, b, c, d]) == 3
    assert count_windows([c, d]) == 1


def test_a_sealed_request_gets_its_own_plan_whatever_else_is_queued() -> None:
    lengths = [22, 7.5, 12, 3, 9, 14, 2.5, 28, 6]
    request = [_item(seconds) for seconds in lengths]
    alone = plan_windows([i.samples for i in request], pack=True)
    seal(request, key=7)
    others = [_item(seconds) for seconds in (4, 5, 6)]  # would fill the request's gaps
    mixed = [others[0], *request, *others[1:]]
    windows = plan_items(mixed, pack=True)
    assert len(windows) == len(alone) + count_windows(others)
    position = {id(item): k for k, item in enumerate(request)}
    sealed = [
        [position[id(mixed[p.item])] for p in w.placements]
        for w in windows
        if mixed[w.placements[0].item].pack_key is not None
    ]
    assert sealed == [[p.item for p in w.placements] for w in alone]


def test_split_gives_each_caller_only_its_own_words_even_inside_one_segment() -> None:
    a, b = _item(4), _item(3)
    windows = plan_windows([a.samples, b.samples], pack=True)
    (window,) = windows
    offset_b = next(p.window_offset for p in window.placements if p.item == 1) / SR
    # One Whisper segment spans the boundary between the two callers.
    segment = _seg(
        0.2,
        offset_b + 2.0,
        [(" red", 0.2, 0.6), (" apple", 3.0, 3.8), (" steel", offset_b + 0.1, offset_b + 0.7),
         (" engine", offset_b + 1.5, offset_b + 2.0)],
    )  # fmt: skip
    out = split_window(window, [a, b], [segment], tokenize=lambda text: [len(text)])
    assert [w.word for s in out[0] for w in s.words] == [" red", " apple"]
    assert [w.word for s in out[1] for w in s.words] == [" steel", " engine"]
    assert out[0][0].text == " red apple"
    assert out[1][0].text == " steel engine"
    assert out[1][0].tokens == [len(" steel engine")]
    # Times are the caller's own: b's first word is 0.1 s into b's audio.
    assert out[1][0].words[0].start == pytest.approx(0.1)
    assert out[1][0].end == pytest.approx(2.0)


def test_a_word_in_the_gap_goes_to_the_nearest_caller() -> None:
    a, b = _item(4), _item(4)
    (window,) = plan_windows([a.samples, b.samples], pack=True)
    gap_start = 4.0
    segment = _seg(3.5, gap_start + 0.1, [(" late", 3.7, gap_start + 0.1)])
    out = split_window(window, [a, b], [segment], tokenize=lambda t: [])
    first = next(p.item for p in window.placements if p.window_offset == 0)
    assert [w.word for s in out[first] for w in s.words] == [" late"]


def test_times_map_back_through_vad_cuts() -> None:
    # The item holds two pieces of speech: 0-2 s and 10-12 s of the original audio.
    pieces = [Piece(0, 0, 2 * SR), Piece(2 * SR, 10 * SR, 2 * SR)]
    item = _item(4, pieces=pieces)
    (window,) = plan_windows([item.samples], pack=True)
    segment = _seg(2.2, 3.0, [(" after", 2.2, 2.6), (" cut", 2.6, 3.0)])
    (moved,) = split_window(window, [item], [segment], tokenize=lambda t: [])[0]
    assert moved.start == pytest.approx(10.2)
    assert moved.end == pytest.approx(11.0)


def test_words_are_needed_only_when_a_segment_reaches_two_callers() -> None:
    a, b = _item(4), _item(4)
    (window,) = plan_windows([a.samples, b.samples], pack=True)
    offset_b = max(p.window_offset for p in window.placements) / SR
    inside = [_seg(0.1, 3.9, [], " one"), _seg(offset_b + 0.2, offset_b + 3.5, [], " two")]
    across = [_seg(3.0, offset_b + 1.0, [], " one two")]
    assert not spans_callers(window, [a, b], inside)
    assert spans_callers(window, [a, b], across)
    # Without words, each whole segment goes to the caller its midpoint lies in.
    out = split_window(window, [a, b], inside, tokenize=lambda t: [])
    first = next(p.item for p in window.placements if p.window_offset == 0)
    assert len(out[first]) == 1
    assert len(out[1 - first]) == 1
    assert out[1 - first][0].start == pytest.approx(0.2)


def test_an_item_the_model_stopped_early_on_is_flagged_for_a_retry() -> None:
    a, b = _item(4), _item(5)
    (window,) = plan_windows([a.samples, b.samples], pack=True)
    first = next(p.item for p in window.placements if p.window_offset == 0)
    # The model transcribed the first caller and stopped: nothing for the second.
    segment = _seg(0.0, 3.9, [(" all", 0.1, 0.5), (" here", 3.0, 3.9)])
    assert cut_short(window, [a, b], [segment]) == [1 - first]
    assert cut_short(window, [a, b], []) == sorted([0, 1], key=lambda i: i != first)


def test_shared_windows_keep_headroom_but_one_item_may_fill_a_window() -> None:
    windows = plan_windows([22 * SR, int(7.5 * SR)], pack=True)
    assert len(windows) == 2  # 22 + 0.2 + 7.5 would pass the 29.5 s a shared window may hold
    assert len(plan_windows([30 * SR], pack=True)) == 1
