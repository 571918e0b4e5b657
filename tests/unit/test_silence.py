"""Choosing cuts (silence.py), cutting a stream into chunks (jobs/chunking.py) and merging
the chunks' transcripts (merge.py): plain arithmetic, no model."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from services.core.settings import JobsSettings
from services.jobs.chunking import Chunker, ChunkPlan, boundaries
from services.transcription.domain import SAMPLE_RATE as SR
from services.transcription.domain import DecodeOptions, Segment, Transcript, Word
from services.transcription.merge import ChunkTranscript, merge_chunks
from services.transcription.packing import count_windows, split_into_items
from services.transcription.silence import pause_cut, pauses_in, quietest_sample
from services.transcription.splitting import unheard_tail


def test_pauses_are_the_gaps_between_speech_within_the_window() -> None:
    speech = [(50, 80), (10, 20), (15, 30)]  # any order, overlapping
    assert pauses_in(speech, 0, 100) == [(0, 10), (30, 50), (80, 100)]
    assert pauses_in(speech, 12, 60) == [(30, 50)]
    assert pauses_in([], 5, 9) == [(5, 9)]


def test_the_cut_is_in_the_middle_of_the_longest_pause() -> None:
    speech = [(0, 100), (110, 200), (240, 300)]
    assert pause_cut(speech, 0, 300, min_pause=5) == 220
    assert pause_cut(speech, 0, 300, min_pause=50) is None  # nothing long enough: overlap
    # Equal pauses: the later one, so chunks stay near their nominal length.
    assert pause_cut([(0, 10), (20, 30), (40, 50)], 0, 50, min_pause=5) == 35


def test_a_hard_cut_lands_on_the_quietest_instant() -> None:
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(3 * SR) * 0.3).astype(np.float32)
    audio[int(1.50 * SR) : int(1.56 * SR)] *= 0.01  # a 60 ms dip between two "words"
    cut = quietest_sample(audio, SR, 2 * SR)
    assert 1.50 * SR <= cut <= 1.56 * SR


class _Timeline:
    """Audio whose samples are their own index (so a chunk's content shows where it came
    from), with speech where `speech_s` says."""

    def __init__(self, seconds: float, speech_s: list[tuple[float, float]]) -> None:
        self.audio = np.arange(int(seconds * SR), dtype=np.float32)
        self.speech = [(int(s * SR), int(e * SR)) for s, e in speech_s]

    def blocks(self) -> list[np.ndarray]:
        step = int(0.7 * SR)
        return [self.audio[i : i + step] for i in range(0, self.audio.shape[0], step)]

    def find(self, window: np.ndarray) -> list[tuple[int, int]]:
        lo = int(window[0])  # samples are their index
        hi = lo + window.shape[0]
        return [(max(s, lo) - lo, min(e, hi) - lo) for s, e in self.speech if e > lo and s < hi]


def _plan(chunk_s: float, **settings: float) -> ChunkPlan:
    return ChunkPlan.of(chunk_s, JobsSettings(**settings))


def _chunks(timeline: _Timeline, plan: ChunkPlan, known: list[float] | None = None) -> list:  # type: ignore[type-arg]
    chunker = Chunker(
        iter(timeline.blocks()), plan, known=boundaries(known or []), speech=timeline.find
    )
    out = []
    while (chunk := chunker.next()) is not None:
        assert np.array_equal(chunk.audio, timeline.audio[chunk.start : chunk.end])
        out.append(chunk)
    return out


def test_chunks_end_in_the_longest_pause_before_their_nominal_end() -> None:
    # Speech everywhere but a short pause at 50 s, a long one at 55 s and one at 110 s.
    talk = [(0, 50), (50.4, 55), (56.2, 110), (110.8, 200)]
    chunks = _chunks(_Timeline(200, talk), _plan(60, cut_search_s=15, min_pause_s=0.3))
    assert [round(c.end_s, 1) for c in chunks] == [55.6, 110.4, 170.4, 200.0]
    assert [c.next_start == c.end for c in chunks[:3]] == [True, True, False]  # no pause at 170
    assert chunks[-1].last
    assert chunks[-1].start_s == pytest.approx(165.4)  # overlapping by 5 s


def test_without_a_pause_chunks_overlap_and_slivers_join_the_last_chunk() -> None:
    chunks = _chunks(_Timeline(140, [(0, 140)]), _plan(60, cut_search_s=15, overlap_s=5))
    assert [(c.start_s, c.end_s) for c in chunks] == [(0, 60), (55, 115), (110, 140)]
    short = _chunks(_Timeline(70, [(0, 70)]), _plan(60, cut_search_s=15))
    assert [(c.start_s, c.end_s) for c in short] == [(0, 70)]  # 10 s past the mark: one chunk


def test_stored_boundaries_are_reused_whatever_the_audio_says() -> None:
    timeline = _Timeline(200, [(0, 200)])
    chunks = _chunks(timeline, _plan(60, cut_search_s=15), known=[40.0, 40.0, 90.0, 87.0])
    assert [(c.start_s, c.end_s) for c in chunks][:2] == [(0, 40), (40, 90)]
    assert [c.decided for c in chunks] == [False, False, True, True]
    assert chunks[2].start_s == 87.0


def test_the_estimate_is_a_lower_bound_that_only_grows() -> None:
    plan = _plan(300, cut_search_s=30)
    assert plan.chunks_for(None) == 1
    assert plan.chunks_for(1200) == 4
    for seconds in (100, 299, 330, 331, 1199):
        chunks = _chunks(_Timeline(seconds, [(0, seconds)]), _plan(300, cut_search_s=30))
        assert plan.chunks_for(seconds) <= len(chunks)


def _word(text: str, start: float, end: float) -> Word:
    return Word(start=start, end=end, word=f" {text}", probability=0.9)


def _part(*words: Word) -> Transcript:
    segment = Segment(
        id=0, seek=0, start=words[0].start, end=words[-1].end,
        text="".join(w.word for w in words), tokens=[1, 2], temperature=0.0,
        avg_logprob=-0.2, compression_ratio=1.2, no_speech_prob=0.0, words=list(words),
    )  # fmt: skip
    return Transcript(
        text=segment.text.strip(), language="en", language_probability=1.0,
        duration_s=words[-1].end, segments=[segment],
    )  # fmt: skip


def test_chunks_cut_at_a_pause_are_only_shifted() -> None:
    merged = merge_chunks(
        [
            ChunkTranscript(0, 10, _part(_word("one", 1, 2), _word("two", 8, 9.5))),
            ChunkTranscript(10, 20, _part(_word("three", 0.5, 1), _word("four", 9, 9.9))),
        ],
        20,
    )
    assert merged.text == "one two three four"
    assert [(w.start, w.end) for w in merged.words] == [(1, 2), (8, 9.5), (10.5, 11), (19, 19.9)]
    assert [s.id for s in merged.segments] == [0, 1]


def test_an_overlap_keeps_each_word_once_from_the_chunk_it_is_further_inside() -> None:
    # Chunk A is 0-60, chunk B 55-120: both heard the overlap, B's first word is cut off and
    # A's last one too; their timestamps disagree slightly.
    a = _part(_word("alpha", 50, 51), _word("bravo", 55.2, 55.8), _word("charlie", 56.5, 57.2),
              _word("delta", 58.0, 58.6), _word("ech", 59.6, 60.0))  # fmt: skip
    b = _part(_word("avo", 0.0, 0.7), _word("charlie", 1.45, 2.25), _word("delta", 3.05, 3.6),
              _word("echo", 4.5, 5.1), _word("foxtrot", 6, 7))  # fmt: skip
    merged = merge_chunks([ChunkTranscript(0, 60, a), ChunkTranscript(55, 120, b)], 120)
    assert merged.text == "alpha bravo charlie delta echo foxtrot"
    starts = [w.start for w in merged.words]
    assert starts == sorted(starts)
    ends = [(w.start, w.end) for w in merged.words]
    assert all(x[1] <= y[0] for x, y in itertools.pairwise(ends))
    assert merged.segments[0].end <= merged.segments[1].start


def test_a_word_both_chunks_keep_at_the_seam_stays_once() -> None:
    # No gap near the overlap's middle (57.5 s): the seam falls inside "charlie", whose two
    # copies disagree by 0.3 s, so each chunk would keep its own copy by midpoint alone.
    a = _part(_word("bravo", 55.5, 56.5), _word("charlie", 56.6, 58.3))
    b = _part(_word("charlie", 1.9, 3.6), _word("delta", 3.7, 5.0))
    merged = merge_chunks([ChunkTranscript(0, 60, a), ChunkTranscript(55, 120, b)], 120)
    assert merged.text == "bravo charlie delta"


def test_times_never_leave_the_file() -> None:
    part = _part(_word("late", 9.5, 10.4))
    merged = merge_chunks([ChunkTranscript(0, 10, part)], 10)
    assert merged.words[0].end == 10
    assert merged.segments[-1].end == 10


def test_the_sync_path_cuts_an_overlong_speech_run_at_its_quietest_instant() -> None:
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(40 * SR) * 0.3).astype(np.float32)
    audio[int(27.0 * SR) : int(27.1 * SR)] = 0.0
    items = split_into_items([(0, 40 * SR)], audio, DecodeOptions(), word_timestamps=False)
    assert 27.0 * SR <= items[0].samples <= 27.1 * SR  # not at exactly 30 s
    assert sum(item.samples for item in items) == 40 * SR


def test_items_end_at_a_pause_not_inside_a_sentence() -> None:
    audio = np.zeros(60 * SR, dtype=np.float32)
    # Three sentences; the second is two VAD clips that touch (a comma pause).
    clips = [(0, 12 * SR), (13 * SR, 20 * SR), (20 * SR, 27 * SR), (28 * SR, 35 * SR)]
    items = split_into_items(clips, audio, DecodeOptions(), word_timestamps=False)
    # One item per run of touching clips (a sentence is never split), and the packer fills
    # windows with them: here two windows, as when consecutive runs were joined.
    assert [[p.source_start for p in item.pieces] for item in items] == [
        [0],
        [13 * SR, 20 * SR],
        [28 * SR],
    ]
    assert count_windows(items) == 2


def test_the_unheard_tail_of_an_item_becomes_an_item_of_its_own() -> None:
    audio = np.arange(40 * SR, dtype=np.float32)
    clips = [(0, 5 * SR), (8 * SR, 12 * SR), (15 * SR, 19 * SR)]
    (item,) = split_into_items(clips, audio, DecodeOptions(), word_timestamps=True)
    heard = [Segment(id=0, seek=0, start=0.5, end=11.0, text=" a b", tokens=[], temperature=0,
                     avg_logprob=0, compression_ratio=1, no_speech_prob=0,
                     words=[_word("a", 0.5, 1.0), _word("b", 10.0, 11.0)])]  # fmt: skip
    tail = unheard_tail(item, heard)
    assert tail is not None
    assert [(p.item_offset, p.source_start, p.length) for p in tail.pieces] == [
        (0, 15 * SR, 4 * SR)
    ]
    assert np.array_equal(tail.speech, audio[15 * SR : 19 * SR])
    assert unheard_tail(item, []) is None  # nothing heard at all: silence, not a cut-short
    everything = [*heard, replace(heard[0], start=16.0, end=18.0, words=[_word("c", 16, 18)])]
    assert unheard_tail(item, everything) is None
    # Without word timestamps the segments' ends say what was heard: one segment over the
    # whole item (not its midpoint) means nothing is missing, so nothing is decoded twice.
    whole = replace(heard[0], start=0.5, end=18.5, words=[])
    assert unheard_tail(item, [whole]) is None
    early = replace(heard[0], start=0.5, end=11.0, words=[])
    assert unheard_tail(item, [early]) is not None
