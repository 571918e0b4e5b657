"""The engine with the real tiny.en model: accuracy, packing across requests, isolation."""

from statistics import mean

import numpy as np
import pytest

from services.transcription.assembly import assemble
from services.transcription.audio import decode_audio
from services.transcription.domain import SAMPLE_RATE, DecodeOptions, TranscriptionOptions
from services.transcription.engine import WhisperEngine
from services.transcription.packing import Piece, WorkItem, count_windows, seal
from tests.conftest import DISTINCT, ENGLISH, SILENCE, report, word_error_rate, words_of

WORDS = TranscriptionOptions(word_timestamps=True)


def _audio(clip: object) -> np.ndarray:
    return decode_audio(clip.path, max_duration_s=600)  # type: ignore[attr-defined]


def _batched(
    engine: WhisperEngine, audios: list[np.ndarray], options: TranscriptionOptions
) -> list:
    """Several requests through one call of the batch function, as the Serve replica does."""
    prepared = [engine.prepare(a, options) for a in audios]
    flat = [item for p in prepared for item in p.items]
    results = engine.run(flat)
    out, start = [], 0
    for p in prepared:
        out.append(assemble(p, results[start : start + len(p.items)]))
        start += len(p.items)
    return out


def test_tiny_transcribes_the_fixtures(tiny_engine: WhisperEngine) -> None:
    rates = []
    for clip in ENGLISH:
        text = tiny_engine.transcribe(_audio(clip), TranscriptionOptions()).text
        rates.append(word_error_rate(clip.text, text))
    report(f"tiny.en in-process WER over {len(ENGLISH)} English clips: mean {mean(rates):.3f}, "
           f"worst {max(rates):.3f}")  # fmt: skip
    assert mean(rates) < 0.15
    # No clip's transcript may carry a tail twice (a recovered tail decoded again).
    assert max(rates) < 0.3


def test_packing_across_requests_keeps_accuracy_and_times(tiny_engine: WhisperEngine) -> None:
    audios = [_audio(c) for c in ENGLISH]
    alone = [tiny_engine.transcribe(a, WORDS) for a in audios]
    together = _batched(tiny_engine, audios, WORDS)
    assert tiny_engine.last_run.windows < len(audios)  # they really shared windows
    wer_alone = mean(word_error_rate(c.text, t.text) for c, t in zip(ENGLISH, alone, strict=True))
    wer_packed = mean(
        word_error_rate(c.text, t.text) for c, t in zip(ENGLISH, together, strict=True)
    )
    report(f"packed vs sequential WER: {wer_packed:.3f} vs {wer_alone:.3f} "
           f"({tiny_engine.last_run.windows} windows for {len(audios)} requests)")  # fmt: skip
    assert wer_packed <= wer_alone + 0.02
    for clip, transcript in zip(ENGLISH, together, strict=True):
        starts = [w.start for w in transcript.words]
        assert starts == sorted(starts)
        for segment in transcript.segments:
            assert 0 <= segment.start <= segment.end <= clip.duration_s + 0.01
        for word in transcript.words:
            assert 0 <= word.start <= word.end <= clip.duration_s + 0.01


@pytest.mark.parametrize("options", [WORDS, TranscriptionOptions()], ids=["words", "text"])
def test_no_word_reaches_another_caller(
    tiny_engine: WhisperEngine, options: TranscriptionOptions
) -> None:
    assert len(DISTINCT) >= 3
    results = _batched(tiny_engine, [_audio(c) for c in DISTINCT], options)
    assert tiny_engine.last_run.windows == 1  # all callers in one window
    for index, (clip, transcript) in enumerate(zip(DISTINCT, results, strict=True)):
        others = set().union(*(words_of(c.text) for j, c in enumerate(DISTINCT) if j != index))
        leaked = words_of(transcript.text) & others
        assert not leaked, f"{clip.name} got words of another caller: {leaked}"
        assert word_error_rate(clip.text, transcript.text) < 0.5


def test_without_packing_output_does_not_depend_on_other_traffic(
    tiny_engine: WhisperEngine,
) -> None:
    audios = [_audio(c) for c in DISTINCT]
    alone = [tiny_engine.transcribe(a, WORDS, pack=False).text for a in audios]
    prepared = [tiny_engine.prepare(a, WORDS) for a in audios]
    results = tiny_engine.run([i for p in prepared for i in p.items], pack=False)
    assert tiny_engine.last_run.windows == len(audios)
    together = [assemble(p, [r]).text for p, r in zip(prepared, results, strict=True)]
    assert together == alone


def test_sealed_windows_give_the_same_words_beside_other_traffic(
    tiny_engine: WhisperEngine,
) -> None:
    """A job's chunk (sealed, as the replica does for background work) comes out word for
    word and time for time the same alone and in one batch with other requests' items."""
    gap = np.zeros(SAMPLE_RATE, dtype=np.float32)
    audio = np.concatenate([x for clip in ENGLISH[:12] for x in (_audio(clip), gap)])
    job = tiny_engine.prepare(audio, WORDS)
    seal(job.items, key=1)
    alone = assemble(job, tiny_engine.run(job.items))
    planned = count_windows(job.items)
    assert tiny_engine.last_run.windows == planned
    others = [tiny_engine.prepare(_audio(c), WORDS) for c in DISTINCT[:3]]
    other_items = [i for p in others for i in p.items]
    mixed = [*other_items[:1], *job.items, *other_items[1:]]
    results = dict(zip(map(id, mixed), tiny_engine.run(mixed), strict=True))
    assert tiny_engine.last_run.windows >= planned + 1
    beside = assemble(job, [results[id(i)] for i in job.items])
    words = [(w.word, w.start, w.end) for s in alone.segments for w in s.words]
    assert [(w.word, w.start, w.end) for s in beside.segments for w in s.words] == words


def test_a_broken_item_fails_only_its_own_request(tiny_engine: WhisperEngine) -> None:
    good = [tiny_engine.prepare(_audio(c), WORDS).items[0] for c in DISTINCT[:2]]
    broken = WorkItem(
        speech=np.zeros((2, SAMPLE_RATE), dtype=np.float32),  # not a mono waveform
        pieces=[Piece(0, 0, 2)],
        decode=DecodeOptions(language="en"),
    )
    results = tiny_engine.run([good[0], broken, good[1]])
    assert isinstance(results[1], Exception)
    assert not isinstance(results[0], Exception)
    assert results[0]
    assert not isinstance(results[2], Exception)
    assert results[2]


def test_silence_gives_empty_text_without_running_the_model(tiny_engine: WhisperEngine) -> None:
    prepared = tiny_engine.prepare(decode_audio(SILENCE, max_duration_s=600), WORDS)
    assert prepared.items == []
    transcript = assemble(prepared, [])
    assert transcript.text == ""
    assert transcript.duration_s == 5.0


def test_decode_options_split_a_batch_into_groups(tiny_engine: WhisperEngine) -> None:
    audio = _audio(DISTINCT[0])
    prompted = TranscriptionOptions(decode=DecodeOptions(prompt="Fruit market."))
    items = tiny_engine.prepare(audio, TranscriptionOptions()).items
    items += tiny_engine.prepare(audio, prompted).items
    results = tiny_engine.run(items)
    assert tiny_engine.last_run.windows == 2
    assert all(not isinstance(r, Exception) and r for r in results)


def test_temperature_above_zero_samples_and_still_transcribes(tiny_engine: WhisperEngine) -> None:
    clip = DISTINCT[0]
    options = TranscriptionOptions(decode=DecodeOptions(temperature=0.2))
    text = tiny_engine.transcribe(_audio(clip), options).text
    assert word_error_rate(clip.text, text) < 0.6


@pytest.mark.parametrize("seconds", [70])
def test_long_audio_becomes_several_window_items(tiny_engine: WhisperEngine, seconds: int) -> None:
    gap = np.zeros(SAMPLE_RATE, dtype=np.float32)
    pieces, total = [], 0
    for clip in ENGLISH:
        pieces += [_audio(clip), gap]
        total += clip.duration_s + 1
        if total > seconds:
            break
    audio = np.concatenate(pieces)
    prepared = tiny_engine.prepare(audio, WORDS)
    assert len(prepared.items) >= 3
    assert all(item.samples <= 30 * SAMPLE_RATE for item in prepared.items)
    transcript = assemble(prepared, tiny_engine.run(prepared.items))
    assert transcript.segments[-1].end > seconds - 15


def test_callers_saying_the_same_thing_are_not_taken_for_a_loop(
    tiny_engine: WhisperEngine,
) -> None:
    # Four callers with the same sentence share a window: the window's text compresses
    # like a repetition loop, but no caller's own text does.
    clip = DISTINCT[0]
    results = _batched(tiny_engine, [_audio(clip)] * 4, WORDS)
    assert tiny_engine.last_run.windows == 1
    assert tiny_engine.last_run.fallbacks == 0
    for transcript in results:
        assert word_error_rate(clip.text, transcript.text) < 0.3
