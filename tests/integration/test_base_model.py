"""The multilingual base model, served beside tiny.en: languages and translation of speech."""

from __future__ import annotations

import httpx
import pytest

from services.transcription.audio import decode_audio
from services.transcription.domain import DecodeOptions, Task, TranscriptionOptions
from services.transcription.engine import WhisperEngine
from services.transcription.languages import language_name
from tests.conftest import FOREIGN, Clip, report, word_error_rate

pytestmark = pytest.mark.integration


def _post(client: httpx.Client, path: str, clip: Clip, **data: str) -> dict:
    with clip.path.open("rb") as f:
        response = client.post(path, files={"file": (clip.name, f)}, data={"model": "base", **data})
    assert response.status_code == 200, response.text
    body: dict = response.json()
    return body


@pytest.mark.parametrize("clip", FOREIGN, ids=lambda c: c.name)
def test_detected_language_matches_the_model_in_process(
    multi_http: httpx.Client, base_engine: WhisperEngine, clip: Clip
) -> None:
    served = _post(multi_http, "/v1/audio/transcriptions", clip, response_format="verbose_json")
    speech = base_engine.prepare(
        decode_audio(clip.path, max_duration_s=600), TranscriptionOptions()
    )
    assert speech.language_probability >= 0.5  # the fixture is one the model recognises
    assert speech.language == clip.language
    assert served["language"] == language_name(speech.language)


@pytest.mark.parametrize("clip", FOREIGN, ids=lambda c: c.name)
def test_translation_matches_the_model_in_process(
    multi_http: httpx.Client, base_engine: WhisperEngine, clip: Clip
) -> None:
    served = _post(multi_http, "/v1/audio/translations", clip)["text"]
    options = TranscriptionOptions(decode=DecodeOptions(task=Task.TRANSLATE))
    in_process = base_engine.transcribe(decode_audio(clip.path, max_duration_s=600), options).text
    distance = word_error_rate(in_process, served)
    report(f"base translation {clip.name}: {served!r} (WER vs in-process {distance:.2f})")
    assert distance <= 0.5
    assert served.isascii()  # English, not the source language
