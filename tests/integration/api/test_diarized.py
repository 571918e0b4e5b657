"""Speaker labels on the Serve app: `response_format=diarized_json` through the `openai`
client and raw HTTP, on a flite conversation of distinct recorded voices (built as the
diarization tests build theirs). The main app has diarization enabled; `/multi` does not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.diarization.conversations import (
    SAMPLE_RATE,
    conversation,
    data_url,
    reference_audio,
    wav_bytes,
)

pytestmark = pytest.mark.integration


CONVERSATION, TRUTH = conversation(2, rounds=2, gap_s=0.4, seed=3)
WAV = wav_bytes(CONVERSATION)
VOICES = ["awb", "rms"]


@pytest.fixture(scope="module")
def client(serve_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{serve_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def _speaker_runs(segments: list[Any]) -> list[str]:
    """The speakers of the segments, repeats of one speaker folded."""
    runs: list[str] = []
    for segment in segments:
        if not runs or runs[-1] != segment.speaker:
            runs.append(segment.speaker)
    return runs


def _truth_runs(mapping: dict[str, str]) -> list[str]:
    return [mapping[turn.speaker] for turn in TRUTH]


def test_diarized_json_labels_each_turn(client: openai.OpenAI) -> None:
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=("talk.wav", WAV),
        response_format="diarized_json",
    )
    assert result.task == "transcribe"
    assert result.duration == pytest.approx(CONVERSATION.size / SAMPLE_RATE, abs=0.05)
    assert result.usage is not None
    assert "harbour" in result.text.lower() or "bicycle" in result.text.lower()
    assert {s.type for s in result.segments} == {"transcript.text.segment"}
    assert [s.id for s in result.segments] == [f"seg_{i}" for i in range(len(result.segments))]
    assert {s.speaker for s in result.segments} == {"A", "B"}
    first = TRUTH[0].speaker
    other = next(t.speaker for t in TRUTH if t.speaker != first)
    assert _speaker_runs(result.segments) == _truth_runs({first: "A", other: "B"})
    for segment in result.segments:
        assert 0 <= segment.start < segment.end <= result.duration + 0.05
        assert segment.text.strip()


def test_known_speakers_name_the_turns(client: openai.OpenAI) -> None:
    references = [data_url(wav_bytes(reference_audio(voice))) for voice in VOICES]
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=("talk.wav", WAV),
        response_format="diarized_json",
        known_speaker_names=["Alice", "Bob"],
        known_speaker_references=references,
        extra_body={"num_speakers": 2},
    )
    assert _speaker_runs(result.segments) == _truth_runs({"awb": "Alice", "rms": "Bob"})


def test_num_speakers_fixes_the_count(client: openai.OpenAI) -> None:
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=("talk.wav", WAV),
        response_format="diarized_json",
        extra_body={"num_speakers": 1},
    )
    assert {s.speaker for s in result.segments} == {"A"}


# -- bad input, raw HTTP --------------------------------------------------------------------

SHORT_REFERENCE = data_url(wav_bytes(reference_audio("awb")))


def _post(
    http: httpx.Client, path: str = "/v1/audio/transcriptions", **fields: Any
) -> httpx.Response:
    data = {"model": "whisper-1", "response_format": "diarized_json", **fields}
    return http.post(path, files={"file": ("talk.wav", WAV)}, data=data)


def _error(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_translation_refuses_diarized_json(http: httpx.Client) -> None:
    error = _error(_post(http, "/v1/audio/translations"))
    assert error["param"] == "response_format"
    assert "translation" in error["message"]


def test_diarized_job_names_each_turn(http: httpx.Client) -> None:
    """Through the tracker and its handle on the SpeakerDiarizer, with known speakers
    (stored at submission, sent by the tracker): the turns are named as sync names them."""
    references = [data_url(wav_bytes(reference_audio(voice))) for voice in VOICES]
    submitted = _post(
        http,
        "/v1/jobs",
        num_speakers="2",
        **{"known_speaker_names[]": ["Alice", "Bob"], "known_speaker_references[]": references},
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    deadline = time.monotonic() + 120
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        assert job["progress"]["total"] is not None, job
        assert job["progress"]["done"] <= job["progress"]["total"], job
        if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert job["status"] == "succeeded", job
    assert job["progress"] == {"done": 2, "total": 2}  # one chunk and the speakers
    result = http.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["task"] == "transcribe"
    runs: list[str] = []
    for segment in body["segments"]:
        if not runs or runs[-1] != segment["speaker"]:
            runs.append(segment["speaker"])
    assert runs == _truth_runs({"awb": "Alice", "rms": "Bob"})
    plain = http.get(f"/v1/jobs/{job_id}/result", params={"response_format": "srt"})
    assert plain.status_code == 200, plain.text
    assert "-->" in plain.text


def test_jobs_refuse_diarized_json_where_not_enabled(multi_http: httpx.Client) -> None:
    error = _error(_post(multi_http, "/v1/jobs"))
    assert error["code"] == "diarization_unavailable"
    assert error["param"] == "response_format"


def test_translation_jobs_refuse_diarized_json(http: httpx.Client) -> None:
    error = _error(_post(http, "/v1/jobs", task="translate"))
    assert error["param"] == "response_format"
    assert "translation" in error["message"]


def test_too_many_references(http: httpx.Client) -> None:
    names = [f"n{i}" for i in range(9)]
    error = _error(
        _post(
            http,
            **{"known_speaker_names[]": names, "known_speaker_references[]": [SHORT_REFERENCE] * 9},
        )
    )
    assert error["param"] == "known_speaker_references"
    assert "At most 8" in error["message"]


def test_names_and_references_must_pair(http: httpx.Client) -> None:
    error = _error(
        _post(
            http,
            **{
                "known_speaker_names[]": ["Alice", "Bob"],
                "known_speaker_references[]": [SHORT_REFERENCE],
            },
        )
    )
    assert "pair" in error["message"]
    assert "2 names and 1 references" in error["message"]


@pytest.mark.parametrize(
    ("reference", "said"),
    [
        ("https://example.com/alice.wav", "data URL of audio"),
        ("data:text/plain;base64,aGVsbG8=", "data URL of audio"),
        ("data:audio/wav;base64,!!!not-base64!!!", "not valid base64"),
        (data_url(b"RIFF nonsense that is not audio"), "could not be decoded"),
        (data_url(wav_bytes(np.zeros(SAMPLE_RATE // 2, dtype=np.float32))), "lasts 0.5 s"),
        (data_url(wav_bytes(np.zeros(12 * SAMPLE_RATE, dtype=np.float32))), "longer than 10 s"),
    ],
)
def test_bad_reference(http: httpx.Client, reference: str, said: str) -> None:
    error = _error(
        _post(
            http, **{"known_speaker_names[]": ["Alice"], "known_speaker_references[]": [reference]}
        )
    )
    assert error["param"] == "known_speaker_references"
    assert said in error["message"]


def test_jobs_refuse_a_bad_reference(http: httpx.Client) -> None:
    short = data_url(wav_bytes(np.zeros(SAMPLE_RATE // 2, dtype=np.float32)))
    fields = {"known_speaker_names[]": ["Alice"], "known_speaker_references[]": [short]}
    error = _error(_post(http, "/v1/jobs", **fields))
    assert error["param"] == "known_speaker_references"
    assert "known_speaker_references[0] lasts 0.5 s" in error["message"]


def test_oversize_reference(http: httpx.Client) -> None:
    """Past the decoded limit (2 MiB) the request model refuses it; past the route's part
    limit (3 MiB of text) the multipart parser does. Both are 400s."""
    big = "data:audio/wav;base64," + "A" * (2_900_000)
    error = _error(
        _post(http, **{"known_speaker_names[]": ["Alice"], "known_speaker_references[]": [big]})
    )
    assert "at most 2097152" in error["message"]
    huge = "data:audio/wav;base64," + "A" * (3_300_000)
    response = _post(
        http, **{"known_speaker_names[]": ["Alice"], "known_speaker_references[]": [huge]}
    )
    assert response.status_code == 400, response.text
    assert "size" in response.text.lower()


def test_other_fields_stay_small(http: httpx.Client) -> None:
    error = _error(_post(http, language="e" * 70_000))
    assert error["param"] == "language"
    assert "at most 65536" in error["message"]


def test_speaker_fields_need_diarized_json(http: httpx.Client) -> None:
    error = _error(_post(http, response_format="json", num_speakers="2"))
    assert "diarized_json" in error["message"]


@pytest.mark.parametrize("count", ["0", "9"])
def test_num_speakers_range(http: httpx.Client, count: str) -> None:
    error = _error(_post(http, num_speakers=count))
    assert error["param"] == "num_speakers"


def test_unavailable_without_the_setting(multi_http: httpx.Client) -> None:
    error = _error(_post(multi_http))
    assert error["code"] == "diarization_unavailable"
    assert "rayscribe[diarization]" in error["message"]
    assert "RAYSCRIBE_DIARIZATION__ENABLED=true" in error["message"]


def test_readyz_reports_the_speaker_labeller_only_where_enabled(
    http: httpx.Client, multi_http: httpx.Client
) -> None:
    # Only the speakers entry: right after the diarization tests the model's held status
    # may be stale on a loaded machine (the app as a whole is tested in test_readiness).
    assert http.get("/readyz").json()["speakers"] == "ok"
    assert "speakers" not in multi_http.get("/readyz").json()
