"""What the engine decodes again after the model stopped short, and how it joins the results.

Arithmetic on synthetic items first (no model), then the real tiny.en model decoding the
tails of several items together.
"""

import itertools
from dataclasses import replace

import numpy as np
import pytest

from services.transcription.domain import SAMPLE_RATE, DecodeOptions, Segment, Word
from services.transcription.engine import WhisperEngine
from services.transcription.packing import ItemResult, WorkItem, split_into_items
from services.transcription.splitting import Tail, tail_of, tails_of
from tests.conftest import DISTINCT, word_error_rate

SR = SAMPLE_RATE


def _item(clips: list[tuple[float, float]]) -> WorkItem:
    audio = np.arange(40 * SR, dtype=np.float32)
    samples = [(int(a * SR), int(b * SR)) for a, b in clips]
    (item,) = split_into_items(samples, audio, DecodeOptions(), word_timestamps=True)
    return item


def _seg(start: float, end: float, *words: tuple[str, float, float]) -> Segment:
    return Segment(
        id=0, seek=0, start=start, end=end, tokens=[1],
        text="".join(w for w, _, _ in words) or " x",
        temperature=0.0, avg_logprob=-0.1, compression_ratio=1.0, no_speech_prob=0.0,
        words=[Word(start=s, end=e, word=w, probability=0.9) for w, s, e in words],
    )  # fmt: skip


def _starts(tail: Tail) -> list[int]:
    return [p.source_start for p in tail.item.pieces]


ITEM = [(0.0, 5.0), (8.0, 12.0), (15.0, 19.0)]


def test_the_pieces_after_the_last_heard_word_are_decoded_again_and_all_heard_is_kept() -> None:
    item = _item(ITEM)
    heard = [_seg(0.5, 11.0, (" a", 0.5, 1.0), (" b", 10.0, 11.0))]
    for short in (False, True):  # whether or not its window was shared
        tail = tail_of(item, heard, cut_short=short)
        assert tail is not None
        assert _starts(tail) == [15 * SR]
        assert tail.item.pieces[0].item_offset == 0
        assert tail.kept == heard


def test_a_stop_inside_the_last_piece_resumes_at_that_piece() -> None:
    item = _item(ITEM)
    first = _seg(0.5, 4.5, (" a", 0.5, 4.5))
    second = _seg(8.2, 9.0, (" b", 8.2, 9.0))  # then nothing for 3 s of the second piece
    # Alone in its window the item is not redone: the unheard part is inside a heard piece
    # followed by the third (whole unheard pieces: those are decoded again).
    tail = tail_of(item, [first, second], cut_short=False)
    assert tail is not None
    assert _starts(tail) == [15 * SR]
    # The last piece heard only in part: a shared window that stopped there resumes at the
    # start of that piece, keeping only what ends before it.
    in_last = _seg(15.2, 16.0, (" c", 15.2, 16.0))
    assert tail_of(item, [first, second, in_last], cut_short=False) is None
    tail = tail_of(item, [first, second, in_last], cut_short=True)
    assert tail is not None
    assert _starts(tail) == [15 * SR]
    assert tail.kept == [first, second]


def test_a_kept_segment_never_reaches_into_what_is_decoded_again() -> None:
    item = _item(ITEM)
    # One segment runs from the second piece into the third: resume at the second piece.
    across = _seg(8.5, 15.8, (" b", 8.5, 11.5), (" c", 15.1, 15.8))
    first = _seg(0.5, 4.5, (" a", 0.5, 4.5))
    tail = tail_of(item, [first, across], cut_short=True)
    assert tail is not None
    assert _starts(tail) == [8 * SR, 15 * SR]
    assert tail.kept == [first]
    assert all(s.end <= tail.item.pieces[0].source_start / SR for s in tail.kept)


@pytest.mark.parametrize("heard", ["nothing", "first piece"])
def test_the_whole_item_is_decoded_again_when_nothing_usable_was_heard(heard: str) -> None:
    item = _item(ITEM)
    segments = [] if heard == "nothing" else [_seg(0.5, 1.0, (" a", 0.5, 1.0))]
    if heard == "nothing":
        # Alone, hearing nothing is silence or noise, not a stop: nothing is redone.
        assert tail_of(item, segments, cut_short=False) is None
    item = _item([(0.0, 18.0)])  # one long piece
    tail = tail_of(item, segments, cut_short=True)
    assert tail is not None
    assert tail.item is item
    assert tail.kept == []


def test_joining_keeps_the_first_result_unless_the_tail_heard_something() -> None:
    first = [_seg(0.5, 1.0, (" a", 0.5, 1.0)), _seg(8.2, 9.0, (" b", 8.2, 9.0))]
    tail = Tail(item=_item([(8.0, 12.0)]), kept=first[:1])
    again = [_seg(8.1, 11.0, (" b", 8.1, 9.0), (" c", 10.0, 11.0))]
    assert tail.merged(first, again) == [first[0], *again]
    assert tail.merged(first, RuntimeError("boom")) == first
    assert tail.merged(first, []) == first
    assert tail.merged(first, [replace(_seg(8.1, 8.2), text=" ")]) == first


def test_joining_never_gives_fewer_words_than_the_first_decoding() -> None:
    """A tail that starts before the last heard word replaces segments already heard:
    when it hears fewer words than those, the first result stands."""
    first = [
        _seg(0.5, 1.0, (" a", 0.5, 1.0)),
        _seg(8.2, 11.0, (" b", 8.2, 9.0), (" c", 10.0, 11.0)),
    ]
    tail = Tail(item=_item([(8.0, 12.0)]), kept=first[:1])
    shorter = [_seg(8.1, 9.0, (" b", 8.1, 9.0))]
    assert tail.merged(first, shorter) == first
    longer = [_seg(8.1, 12.0, (" b", 8.1, 9.0), (" c", 10.0, 11.0), (" d", 11.2, 12.0))]
    assert tail.merged(first, longer) == [first[0], *longer]
    same = [_seg(8.1, 11.0, (" b", 8.1, 9.0), (" see", 10.0, 11.0))]
    assert tail.merged(first, same) == [first[0], *same]  # a tie keeps the later decoding


def test_failed_items_have_no_tail() -> None:
    item = _item(ITEM)
    heard = [_seg(0.5, 11.0, (" a", 0.5, 1.0), (" b", 10.0, 11.0))]
    results: list[ItemResult] = [heard, RuntimeError("boom"), heard]
    assert sorted(tails_of([item, item, item], results, set())) == [0, 2]


def _cut(result: ItemResult, before_s: float) -> list[Segment]:
    """The result as if the model had stopped before `before_s` (whole segments kept)."""
    assert not isinstance(result, Exception)
    return [s for s in result if s.end <= before_s]


@pytest.mark.parametrize("pack", [True, False])
def test_tails_of_several_items_are_decoded_together_and_joined_in_order(
    tiny_engine: WhisperEngine, pack: bool
) -> None:
    from tests.unit.test_engine import WORDS, _audio

    pause = np.zeros(SR, dtype=np.float32)
    clips = [(DISTINCT[k], DISTINCT[(k + 1) % len(DISTINCT)]) for k in range(3)]
    audios = [np.concatenate([_audio(a), pause, _audio(b)]) for a, b in clips]
    items = [tiny_engine.prepare(audio, WORDS).items for audio in audios]
    assert all(len(i) == 1 and len(i[0].pieces) >= 2 for i in items)
    group = [i[0] for i in items]
    full = tiny_engine.run(group, pack=pack)
    # The model "stopped" before each item's second sentence: only that is decoded again.
    cut = [_cut(r, a.duration_s + 0.5) for r, (a, _) in zip(full, clips, strict=True)]
    assert all(cut)
    out: list[ItemResult] = list(cut)
    tiny_engine.last_run.retried = tiny_engine.last_run.retry_windows = 0
    tiny_engine._decode_tails(group, group[0].decode, out, set(), pack=pack)
    assert tiny_engine.last_run.retried == 3
    assert tiny_engine.last_run.retry_windows == (1 if pack else 3)
    for (a, b), first, result in zip(clips, cut, out, strict=True):
        assert not isinstance(result, Exception)
        assert result[: len(first)] == first  # what was heard is kept as it was
        added = "".join(s.text for s in result[len(first) :])
        assert word_error_rate(b.text, added) < 0.3  # the second sentence, once
        assert word_error_rate(f"{a.text} {b.text}", "".join(s.text for s in result)) < 0.3
        words = [w for s in result for w in s.words]
        assert [w.start for w in words] == sorted(w.start for w in words)
        assert all(x.end <= y.start + 1e-6 for x, y in itertools.pairwise(result))
