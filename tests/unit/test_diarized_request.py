"""The speaker fields of a transcription request (`diarized_json`), checked before any audio
is decoded: pairing, counts, data URLs, sizes, and the formats and routes that allow them."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from services.core.errors import InvalidRequestError
from services.transcription.domain import ResponseFormat, Task
from services.transcription.request import TranscriptionRequest
from services.transcription.request_speakers import (
    MAX_REFERENCE_BYTES,
    MAX_TEXT_FIELD_CHARS,
    reference_audio,
)

CLIP = b"RIFF....WAVEfmt " + bytes(64)
URL = "data:audio/wav;base64," + base64.b64encode(CLIP).decode()


def _request(**fields: Any) -> TranscriptionRequest:
    return TranscriptionRequest.model_validate(
        {"model": "whisper-1", "response_format": "diarized_json", **fields}
    )


def _refused(**fields: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        _request(**fields)
    return caught.value


def test_form_fields_with_brackets() -> None:
    request = _request(
        **{
            "known_speaker_names[]": [" Alice ", "Bob"],
            "known_speaker_references[]": [URL, URL],
            "num_speakers": "2",
        }
    )
    assert request.diarized
    assert request.known_speaker_names == ["Alice", "Bob"]
    assert request.num_speakers == 2
    assert request.speaker_references() == [("Alice", CLIP), ("Bob", CLIP)]


def test_diarized_json_asks_the_model_for_word_timing() -> None:
    assert _request().engine_options().word_timestamps
    plain = TranscriptionRequest(model="whisper-1")
    assert not plain.engine_options().word_timestamps


def test_names_and_references_pair() -> None:
    # The param names the side that is short.
    error = _refused(known_speaker_names=["Alice"], known_speaker_references=[])
    assert error.param == "known_speaker_references"
    assert "1 names and 0 references" in error.message
    error = _refused(known_speaker_names=[], known_speaker_references=[URL])
    assert error.param == "known_speaker_names"


def test_at_most_eight_references() -> None:
    error = _refused(
        known_speaker_names=[f"s{i}" for i in range(9)], known_speaker_references=[URL] * 9
    )
    assert "At most 8" in error.message


@pytest.mark.parametrize("names", [["", "Bob"], ["x" * 65, "Bob"], ["Al", "Al"]])
def test_bad_names(names: list[str]) -> None:
    error = _refused(known_speaker_names=names, known_speaker_references=[URL, URL])
    assert error.param == "known_speaker_names"


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://example.com/a.wav", "data URL of audio"),
        ("data:image/png;base64,AAAA", "data URL of audio"),
        ("data:audio/wav,plain", "data URL of audio"),
        ("data:audio/wav;base64,@@@@", "not valid base64"),
        ("data:audio/wav;base64,", "holds no audio"),
        ("data:audio/wav;base64," + "A" * (MAX_REFERENCE_BYTES * 4 // 3 + 8), "at most"),
    ],
)
def test_bad_references(url: str, said: str) -> None:
    error = _refused(known_speaker_names=["Alice"], known_speaker_references=[url])
    assert error.param == "known_speaker_references"
    assert said in error.message


def test_codec_parameters_in_the_data_url() -> None:
    url = "data:audio/webm;codecs=opus;base64," + base64.b64encode(CLIP).decode()
    assert reference_audio(url, 0) == CLIP


@pytest.mark.parametrize("count", [0, 9, -1])
def test_num_speakers_range(count: int) -> None:
    assert _refused(num_speakers=count).param == "num_speakers"


@pytest.mark.parametrize(
    "fields",
    [{"num_speakers": 2}, {"known_speaker_names": ["A"], "known_speaker_references": [URL]}],
)
def test_speaker_fields_need_diarized_json(fields: dict[str, Any]) -> None:
    error = _refused(**fields, response_format="verbose_json")
    assert error.param == "response_format"
    assert "diarized_json" in error.message


def test_other_text_fields_stay_small() -> None:
    error = _refused(prompt="p" * (MAX_TEXT_FIELD_CHARS + 1))
    assert error.param == "prompt"
    # A reference may be far bigger than that (it is checked against its own limit).
    big = "data:audio/wav;base64," + base64.b64encode(bytes(MAX_TEXT_FIELD_CHARS)).decode()
    assert _request(known_speaker_names=["A"], known_speaker_references=[big])


def test_translation_and_batches_refuse_diarized_json() -> None:
    with pytest.raises(InvalidRequestError, match="translations"):
        _request().for_route(Task.TRANSLATE, granularities=False)
    with pytest.raises(InvalidRequestError, match="not yet on batches"):
        _request().for_route(Task.TRANSCRIBE)
    assert _request().for_route(Task.TRANSCRIBE, live=True).diarized
    assert _request(num_speakers=2).for_route(Task.TRANSCRIBE, job=True).diarized
    known = _request(
        known_speaker_names=["A"], known_speaker_references=["data:audio/wav;base64,UklGRg=="]
    )
    assert known.for_route(Task.TRANSCRIBE, job=True).known_speaker_names == ["A"]


def test_stream_refuses_diarized_json() -> None:
    assert _refused(stream=True).param == "response_format"


def test_fingerprint_counts_the_speakers() -> None:
    plain = _request().fingerprint("sha")
    named = _request(known_speaker_names=["A"], known_speaker_references=[URL]).fingerprint("sha")
    assert plain != named
    assert TranscriptionRequest(model="whisper-1").response_format is ResponseFormat.JSON
