"""OpenAI's newer fields and ours on the Serve app: `chunking_strategy`, `include[]`,
`hotwords` (through `extra_body`) and `POST /v1/audio/language`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import DISTINCT, FOREIGN, HOSTILE, Clip, normalise

pytestmark = pytest.mark.integration

CLIP = DISTINCT[0]


@pytest.fixture(scope="module")
def client(serve_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{serve_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def _post(http: httpx.Client, path: str, clip: Clip = CLIP, **data: Any) -> httpx.Response:
    with clip.path.open("rb") as f:
        return http.post(path, files={"file": (clip.name, f)}, data={"model": "whisper-1", **data})


# -- chunking_strategy ----------------------------------------------------------------------


def test_chunking_strategy_through_the_client(client: openai.OpenAI) -> None:
    auto = client.audio.transcriptions.create(
        model="whisper-1", file=CLIP.path, chunking_strategy="auto"
    )
    tuned = client.audio.transcriptions.create(
        model="whisper-1",
        file=CLIP.path,
        chunking_strategy={
            "type": "server_vad",
            "threshold": 0.4,
            "prefix_padding_ms": 200,
            "silence_duration_ms": 500,
        },
    )
    assert normalise(auto.text) == normalise(tuned.text) != ""


def test_server_vad_threshold_reaches_the_vad(http: httpx.Client) -> None:
    """A threshold no frame reaches leaves no speech: the knob is really Silero's."""
    strict = {"type": "server_vad", "threshold": 1.0}
    response = _post(http, "/v1/audio/transcriptions", chunking_strategy=json.dumps(strict))
    assert response.status_code == 200, response.text
    assert response.json()["text"] == ""
    bracketed = _post(
        http,
        "/v1/audio/transcriptions",
        **{"chunking_strategy[type]": "server_vad", "chunking_strategy[threshold]": "1.0"},
    )
    assert bracketed.json()["text"] == ""


@pytest.mark.parametrize(
    "fields",
    [
        {"chunking_strategy": "manual"},
        {"chunking_strategy": "{not json"},
        {"chunking_strategy": json.dumps({"type": "semantic_vad"})},
        {"chunking_strategy": json.dumps({"type": "server_vad", "threshold": 2})},
        {"chunking_strategy": json.dumps({"type": "server_vad", "silence_duration_ms": -1})},
        {"chunking_strategy": json.dumps({"type": "server_vad", "prefix_padding_ms": "lots"})},
        {"chunking_strategy[type]": "server_vad", "chunking_strategy[eagerness]": "high"},
        {"chunking_strategy[threshold]": "0.5"},
        {"chunking_strategy": "auto", "chunking_strategy[type]": "server_vad"},
    ],
    ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items())[:60],
)
def test_invalid_chunking_strategy_is_400(http: httpx.Client, fields: dict[str, str]) -> None:
    response = _post(http, "/v1/audio/transcriptions", **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "chunking_strategy"
    assert "chunking_strategy" in error["message"]


# -- include[]=logprobs -----------------------------------------------------------------------


def test_logprobs_in_json(client: openai.OpenAI) -> None:
    result = client.audio.transcriptions.create(
        model="whisper-1", file=CLIP.path, include=["logprobs"]
    )
    assert result.logprobs
    assert "".join(lp.token or "" for lp in result.logprobs).strip() == result.text
    assert all((lp.logprob or 0.0) <= 0.0 for lp in result.logprobs)
    plain = client.audio.transcriptions.create(model="whisper-1", file=CLIP.path)
    assert plain.logprobs is None
    assert plain.text == result.text


@pytest.mark.parametrize(
    "fields",
    [
        {"include[]": "tokens"},
        {"include[]": "logprobs", "response_format": "verbose_json"},
        {"include[]": "logprobs", "response_format": "srt"},
    ],
)
def test_bad_include_is_400(http: httpx.Client, fields: dict[str, str]) -> None:
    response = _post(http, "/v1/audio/transcriptions", **fields)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith("include")


def test_include_on_translations_is_400(http: httpx.Client) -> None:
    response = _post(http, "/v1/audio/translations", **{"include[]": "logprobs"})
    assert response.status_code == 400, response.text


# -- hotwords (ours) --------------------------------------------------------------------------


def test_hotwords_through_extra_body_and_keywords(client: openai.OpenAI) -> None:
    for extra in ({"hotwords": "cherries grapes"}, {"keywords": ["cherries", "grapes"]}):
        result = client.audio.transcriptions.create(
            model="whisper-1", file=CLIP.path, extra_body=extra
        )
        assert "grapes" in normalise(result.text)


def test_hotwords_too_long_is_400(http: httpx.Client) -> None:
    response = _post(http, "/v1/audio/transcriptions", hotwords="word " * 400)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "hotwords"


# -- POST /v1/audio/language --------------------------------------------------------------------


@pytest.mark.parametrize("clip", FOREIGN[:2], ids=lambda c: c.name)
def test_language_on_the_multilingual_model(multi_http: httpx.Client, clip: Clip) -> None:
    response = _post(multi_http, "/v1/audio/language", clip, top="3", model="base")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["language"] == clip.language
    ranked = body["languages"]
    assert len(ranked) == 3
    assert ranked[0]["language"] == clip.language
    assert [r["probability"] for r in ranked] == sorted(
        (r["probability"] for r in ranked), reverse=True
    )
    assert 0.5 <= ranked[0]["probability"] <= 1.0
    assert body["usage"]["seconds"] == pytest.approx(clip.duration_s, abs=0.1)


def test_language_on_an_english_only_model_is_400(http: httpx.Client) -> None:
    response = _post(http, "/v1/audio/language")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unsupported_model"


@pytest.mark.parametrize(
    ("fields", "status"),
    [({"model": "whisper-9"}, 400), ({"top": "0"}, 400), ({"top": "many"}, 400)],
)
def test_language_bad_fields(multi_http: httpx.Client, fields: dict[str, str], status: int) -> None:
    response = _post(multi_http, "/v1/audio/language", **{"model": "base", **fields})
    assert response.status_code == status, response.text


def test_language_bad_audio(multi_http: httpx.Client) -> None:
    for path, status in list(HOSTILE.items())[:3]:
        with path.open("rb") as f:
            response = multi_http.post(
                "/v1/audio/language", files={"file": (path.name, f)}, data={"model": "base"}
            )
        assert response.status_code == status, (path.name, response.text)
