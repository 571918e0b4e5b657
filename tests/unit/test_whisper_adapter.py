"""The faster-whisper internals `whisper_adapter.py` relies on, pinned to the version it was
written against. A failure here after an upgrade says what to re-check, not that the
service is broken: read the adapter's docstring, check each internal, then move
`WRITTEN_FOR`."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import pytest
from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.transcribe import TranscriptionOptions

from services.transcription.audio import decode_audio
from services.transcription.domain import SAMPLE_RATE, DecodeOptions, Segment
from services.transcription.engine import WhisperEngine
from services.transcription.whisper_adapter import WRITTEN_FOR, WindowDecoder
from tests.conftest import ENGLISH, word_error_rate


def test_the_installed_faster_whisper_is_the_one_the_adapter_was_written_for() -> None:
    installed = version("faster-whisper")
    assert installed == WRITTEN_FOR, (
        f"faster-whisper {installed} is installed, but services/transcription/"
        f"whisper_adapter.py was written against {WRITTEN_FOR}: it overrides "
        "BatchedInferencePipeline.generate_segment_batched, reads the encoder output it "
        "keeps, and calls WhisperModel.add_word_timestamps. Re-check those against the new "
        "version (this file's other tests list the signatures), then update WRITTEN_FOR."
    )


# (callable, the parameters the adapter passes or overrides, in order)
RELIED_ON: list[tuple[Callable[..., Any], list[str]]] = [
    (BatchedInferencePipeline.__init__, ["self", "model"]),
    (
        BatchedInferencePipeline.forward,
        ["self", "features", "tokenizer", "chunks_metadata", "options"],
    ),
    (
        BatchedInferencePipeline.generate_segment_batched,
        ["self", "features", "tokenizer", "options"],
    ),
    (
        WhisperModel.add_word_timestamps,
        [
            "self",
            "segments",
            "tokenizer",
            "encoder_output",
            "num_frames",
            "prepend_punctuations",
            "append_punctuations",
            "last_speech_timestamp",
        ],
    ),
    (
        WhisperModel.get_prompt,
        ["self", "tokenizer", "previous_tokens", "without_timestamps", "prefix", "hotwords"],
    ),
    (WhisperModel.encode, ["self", "features"]),
]


def _name(value: object) -> str:
    return getattr(value, "__qualname__", "")


@pytest.mark.parametrize(("function", "parameters"), RELIED_ON, ids=_name)
def test_the_internals_the_adapter_relies_on_keep_their_signatures(
    function: Callable[..., Any], parameters: list[str]
) -> None:
    found = list(inspect.signature(function).parameters)
    assert found == parameters, (
        f"{function.__qualname__} now takes {found}, the adapter was written for {parameters}"
    )


def test_the_pipeline_still_decodes_through_the_method_the_adapter_overrides() -> None:
    # `_Pipeline` keeps the encoder output by overriding `generate_segment_batched`: that
    # only works while `forward` calls it, and splits segments the way the adapter expects.
    source = inspect.getsource(BatchedInferencePipeline.forward)
    assert "self.generate_segment_batched(" in source
    assert "self.model._split_segments_by_timestamps(" in source
    fields = {f.name for f in dataclasses.fields(TranscriptionOptions)}
    assert {
        "temperatures",
        "word_timestamps",
        "multilingual",
        "hotwords",
        "clip_timestamps",
    } <= fields


def _decoder(engine: WhisperEngine) -> WindowDecoder:
    return engine._decoder


def test_words_are_aligned_afterwards_for_just_the_windows_that_ask(
    tiny_engine: WhisperEngine,
) -> None:
    clips = [c for c in ENGLISH if c.duration_s < 25][:2]
    audios = [decode_audio(c.path, max_duration_s=30) for c in clips]
    asked: list[int] = []

    def needs_words(k: int, segments: list[Segment]) -> bool:
        asked.append(k)
        return k == 1

    out = _decoder(tiny_engine).decode(
        audios, DecodeOptions(language="en"), needs_words=needs_words
    )
    assert sorted(asked) == [0, 1]
    assert [w for s in out[0] for w in s.words] == []
    words = [w for s in out[1] for w in s.words]
    assert words, "the window that asked for words got none"
    duration_s = audios[1].shape[0] / SAMPLE_RATE
    # Window-local times, within the window's own audio, in order.
    assert all(0 <= w.start <= w.end <= duration_s + 0.5 for w in words)
    assert all(a.start <= b.start for a, b in itertools.pairwise(words))
    for clip, segments in zip(clips, out, strict=True):
        assert word_error_rate(clip.text, "".join(s.text for s in segments)) < 0.35


def test_a_temperature_above_zero_samples_through_the_override(tiny_engine: WhisperEngine) -> None:
    clip = next(c for c in ENGLISH if c.duration_s < 25)
    audio = decode_audio(clip.path, max_duration_s=30)
    decoder = _decoder(tiny_engine)
    hot = DecodeOptions(language="en", temperature=0.4)
    (segments,) = decoder.decode([audio], hot, needs_words=lambda k, s: True)
    assert segments
    assert all(s.temperature == 0.4 for s in segments)
    assert any(s.words for s in segments)  # aligned on the encoder output the override kept
    assert word_error_rate(clip.text, "".join(s.text for s in segments)) < 0.6
