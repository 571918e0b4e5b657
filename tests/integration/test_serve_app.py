"""The real Serve app, through HTTP and the official openai client."""

from __future__ import annotations

import time

import httpx
import pytest
import srt
import webvtt
from openai import OpenAI

from services.transcription.audio import decode_audio
from services.transcription.domain import TranscriptionOptions
from services.transcription.engine import WhisperEngine
from tests.conftest import DISTINCT, ENGLISH, HOSTILE, TWO_HOURS, report, word_error_rate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def openai_client(serve_url: str) -> OpenAI:
    return OpenAI(base_url=f"{serve_url}/v1", api_key="unused-until-auth", max_retries=0)


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_openai_client_every_response_format(openai_client: OpenAI, fmt: str) -> None:
    clip = ENGLISH[0]
    with clip.path.open("rb") as f:
        result = openai_client.audio.transcriptions.create(
            file=f, model="whisper-1", response_format=fmt
        )
    text = result if isinstance(result, str) else result.text
    if fmt == "srt":
        text = " ".join(s.content for s in srt.parse(result))
    elif fmt == "vtt":
        text = " ".join(c.text for c in webvtt.from_string(result))
    assert word_error_rate(clip.text, text) < 0.3


def test_openai_client_words_and_segments(openai_client: OpenAI) -> None:
    clip = max(ENGLISH, key=lambda c: c.duration_s)
    with clip.path.open("rb") as f:
        result = openai_client.audio.transcriptions.create(
            file=f,
            model="whisper-1",
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert result.language == "english"
    assert result.duration == pytest.approx(clip.duration_s, abs=0.05)
    assert result.words
    assert result.segments
    word_starts = [w.start for w in result.words]
    assert word_starts == sorted(word_starts)
    segment_starts = [s.start for s in result.segments]
    assert segment_starts == sorted(segment_starts)
    for item in [*result.words, *result.segments]:
        assert 0 <= item.start <= item.end <= result.duration
    assert result.usage is not None


# openai 3.x marks `audio.translations` deprecated; the endpoint is still OpenAI's contract.
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_openai_client_translation(openai_client: OpenAI) -> None:
    clip = DISTINCT[0]
    with clip.path.open("rb") as f:
        result = openai_client.audio.translations.create(file=f, model="whisper-1")
    assert word_error_rate(clip.text, result.text) < 0.5


def test_subtitles_parse_with_real_parsers(http: httpx.Client) -> None:
    clip = max(ENGLISH, key=lambda c: c.duration_s)
    for fmt in ("srt", "vtt"):
        with clip.path.open("rb") as f:
            response = http.post(
                "/v1/audio/transcriptions",
                files={"file": (clip.name, f)},
                data={"model": "whisper-1", "response_format": fmt},
            )
        assert response.status_code == 200
        cues = (
            list(srt.parse(response.text))
            if fmt == "srt"
            else list(webvtt.from_string(response.text))
        )
        assert cues


def test_one_at_a_time_the_service_matches_the_engine(
    http: httpx.Client, tiny_engine: WhisperEngine
) -> None:
    rates = []
    for clip in ENGLISH:
        with clip.path.open("rb") as f:
            response = http.post(
                "/v1/audio/transcriptions",
                files={"file": (clip.name, f)},
                data={"model": "whisper-1"},
            )
        assert response.status_code == 200
        served = response.json()["text"]
        audio = decode_audio(clip.path, max_duration_s=600)
        assert served == tiny_engine.transcribe(audio, TranscriptionOptions()).text, clip.name
        rates.append(word_error_rate(clip.text, served))
    report(f"service WER (one request at a time, tiny.en): {sum(rates) / len(rates):.3f}")


@pytest.mark.parametrize(
    ("path", "status"), sorted(HOSTILE.items()), ids=lambda v: getattr(v, "name", "")
)
def test_hostile_files_then_the_service_still_serves(
    http: httpx.Client, path: object, status: int
) -> None:
    started = time.perf_counter()
    with path.open("rb") as f:  # type: ignore[attr-defined]
        response = http.post(
            "/v1/audio/transcriptions",
            files={"file": (path.name, f)},  # type: ignore[attr-defined]
            data={"model": "whisper-1"},
        )
    elapsed = time.perf_counter() - started
    assert response.status_code == status, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    if path == TWO_HOURS:
        report(f"two-hour FLAC refused in {elapsed:.2f} s")
        assert elapsed < 5
    clip = DISTINCT[0]
    with clip.path.open("rb") as f:
        after = http.post(
            "/v1/audio/transcriptions", files={"file": (clip.name, f)}, data={"model": "whisper-1"}
        )
    assert after.status_code == 200


def test_oversize_upload_refused_through_the_proxy(http: httpx.Client) -> None:
    body = b"\0" * (26 * 1024 * 1024)
    response = http.post(
        "/v1/audio/transcriptions",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"


def test_request_id_is_serves_and_sent_once(http: httpx.Client) -> None:
    response = http.get("/healthz", headers={"X-Request-ID": "trace-me-123"})
    assert response.headers.get_list("x-request-id") == ["trace-me-123"]
    generated = http.get("/healthz")
    assert len(generated.headers.get_list("x-request-id")) == 1


def test_probes_and_models(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["model"] == ready["database"] == "ok"
    assert http.get("/v1/models").json()["data"][0]["id"] == "tiny.en"
