"""The official `openai` client, pointed at our app, parses every response type we send.

The client validates strictly (`_strict_response_validation`), so a field of the wrong
type or a missing required one fails here, not in a user's code.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai.types.audio import Transcription, TranscriptionVerbose, Translation

from deployments.dependencies import build_ingress_resources
from deployments.fastapi_app import create_app
from services.core.settings import Settings
from services.migrations import upgrade as migrate
from services.resources import build_resources
from services.transcription.engine import WhisperEngine
from services.transcription.local import LocalTranscriber
from tests.conftest import DISTINCT, HOSTILE
from tests.live_app import serve_on_loopback


@pytest.fixture(scope="module")
def client(settings: Settings, tiny_engine: WhisperEngine) -> Iterator[openai.OpenAI]:
    migrate(settings.database_url)
    runtime = build_resources(settings, nudge=lambda: None)
    app = create_app(build_ingress_resources(runtime, LocalTranscriber(tiny_engine)))
    with serve_on_loopback(app) as url:
        yield openai.OpenAI(
            base_url=f"{url}/v1", api_key="unused", max_retries=0, _strict_response_validation=True
        )


def test_json_parses_as_transcription(client: openai.OpenAI) -> None:
    result = client.audio.transcriptions.create(model="whisper-1", file=DISTINCT[0].path)
    assert isinstance(result, Transcription)
    assert "bananas" in result.text.lower()
    assert result.usage is not None
    assert result.usage.type == "duration"


def test_verbose_json_with_segments_and_words_parses(client: openai.OpenAI) -> None:
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=DISTINCT[0].path,
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert isinstance(result, TranscriptionVerbose)
    assert result.language == "english"
    assert result.segments
    assert result.segments[0].avg_logprob < 0
    assert result.words
    assert result.words[0].end >= result.words[0].start


def test_translation_and_text_formats_parse(client: openai.OpenAI) -> None:
    # The client deprecates translations (OpenAI's API, not ours).
    with pytest.warns(DeprecationWarning, match="deprecated"):
        translated = client.audio.translations.create(model="tiny.en", file=DISTINCT[1].path)
    assert isinstance(translated, Translation)
    assert translated.text
    srt = client.audio.transcriptions.create(
        model="whisper-1", file=DISTINCT[0].path, response_format="srt"
    )  # the same decoding as the json test's: served from the result cache
    assert isinstance(srt, str)
    assert "-->" in srt


def test_errors_parse_as_the_clients_error_types(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="gpt-4o", file=DISTINCT[0].path)
    assert (caught.value.code, caught.value.param) == ("model_not_found", "model")
    assert caught.value.type == "invalid_request_error"
    assert "whisper-1" in caught.value.message
    unsupported = next(path for path, status in HOSTILE.items() if status == 415)
    with pytest.raises(openai.APIStatusError) as refused:
        client.audio.transcriptions.create(model="whisper-1", file=unsupported)
    assert refused.value.status_code == 415
    assert refused.value.param == "file"
