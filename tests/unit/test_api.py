"""The HTTP contract, without Ray: the FastAPI app around the in-process engine.

Every endpoint gets its bad-input tests here (garbage, truncated audio, oversize, wrong
types); the same contract runs again through the real Serve app in tests/integration.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.dependencies import build_ingress_resources
from deployments.fastapi_app import create_app
from services.core.settings import Settings
from services.migrations import upgrade as migrate
from services.resources import build_resources
from services.transcription.engine import WhisperEngine
from services.transcription.local import LocalTranscriber
from tests.conftest import DISTINCT, ENGLISH, HOSTILE, SILENCE, TWO_HOURS, word_error_rate

TRANSCRIBE = "/v1/audio/transcriptions"
SMALL_LIMIT = 200_000


def _client(settings: Settings, engine: WhisperEngine) -> TestClient:
    migrate(settings.database_url)
    runtime = build_resources(settings, nudge=lambda: None)
    return TestClient(create_app(build_ingress_resources(runtime, LocalTranscriber(engine))))


@pytest.fixture(scope="module")
def client(settings: Settings, tiny_engine: WhisperEngine) -> Iterator[TestClient]:
    with _client(settings, tiny_engine) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def strict_client(settings: Settings, tiny_engine: WhisperEngine) -> Iterator[TestClient]:
    """Small limits, to exercise 413s without large files."""
    strict = settings.model_copy(
        update={
            "server": settings.server.model_copy(
                update={"max_upload_bytes": SMALL_LIMIT, "sync_max_duration_s": 5.0}
            )
        }
    )
    with _client(strict, tiny_engine) as test_client:
        yield test_client


def _post(client: TestClient, path: object, **fields: object) -> object:
    data = {"model": "whisper-1", **fields}
    with open(path, "rb") as f:  # type: ignore[call-overload]
        return client.post(TRANSCRIBE, files={"file": (path.name, f)}, data=data)  # type: ignore[attr-defined]


def _assert_openai_error(response: object, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def test_json_transcription(client: TestClient) -> None:
    clip = ENGLISH[0]
    response = _post(client, clip.path)
    assert response.status_code == 200
    body = response.json()
    assert word_error_rate(clip.text, body["text"]) < 0.3
    assert body["usage"] == {
        "type": "duration",
        "seconds": pytest.approx(clip.duration_s, abs=0.05),
    }


def test_openai_bracketed_granularities_return_words(client: TestClient) -> None:
    clip = DISTINCT[0]
    with open(clip.path, "rb") as f:
        response = client.post(
            TRANSCRIBE,
            files=[
                ("file", (clip.name, f)),
                ("model", (None, "whisper-1")),
                ("response_format", (None, "verbose_json")),
                ("timestamp_granularities[]", (None, "word")),
                ("timestamp_granularities[]", (None, "segment")),
            ],
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["words"]) >= 5
    assert body["segments"]
    assert body["language"] == "english"


def test_plain_granularities_spelling_works_too(client: TestClient) -> None:
    response = _post(
        client, DISTINCT[1].path, response_format="verbose_json", timestamp_granularities="word"
    )
    assert response.status_code == 200
    assert response.json()["words"]
    assert "segments" not in response.json()


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [("text", "text/plain"), ("srt", "application/x-subrip"), ("vtt", "text/vtt")],
)
def test_text_formats(client: TestClient, fmt: str, media_type: str) -> None:
    response = _post(client, ENGLISH[0].path, response_format=fmt)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert "boat" in response.text.lower()


def test_translation_endpoint(client: TestClient) -> None:
    clip = DISTINCT[0]
    with open(clip.path, "rb") as f:
        response = client.post(
            "/v1/audio/translations",
            files={"file": (clip.name, f)},
            data={"model": "tiny.en", "response_format": "verbose_json"},
        )
    assert response.status_code == 200
    assert response.json()["task"] == "translate"
    assert word_error_rate(clip.text, response.json()["text"]) < 0.5


def test_silence_is_200_with_empty_text(client: TestClient) -> None:
    response = _post(client, SILENCE, response_format="verbose_json")
    assert response.status_code == 200
    assert response.json()["text"] == ""
    assert response.json()["segments"] == []
    assert response.json()["duration"] == 5.0


@pytest.mark.parametrize(
    ("path", "status"), sorted(HOSTILE.items()), ids=lambda v: getattr(v, "name", "")
)
def test_hostile_files_get_the_mapped_status(client: TestClient, path: object, status: int) -> None:
    _assert_openai_error(_post(client, path), status, param="file")


def test_long_audio_refusal_points_to_jobs(client: TestClient) -> None:
    error = _assert_openai_error(_post(client, TWO_HOURS), 413)
    assert error["code"] == "audio_too_long"
    assert "job" in error["message"]


def test_unknown_model_is_model_not_found(client: TestClient) -> None:
    error = _assert_openai_error(_post(client, ENGLISH[0].path, model="gpt-4o"), 400, "model")
    assert error["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("response_format", "xml"),
        ("temperature", "hot"),
        ("temperature", "1.5"),
        ("language", "klingon"),
        ("timestamp_granularities[]", "sentence"),
    ],
)
def test_wrong_values_are_400_naming_the_field(client: TestClient, field: str, value: str) -> None:
    _assert_openai_error(_post(client, ENGLISH[0].path, **{field: value}), 400, field)


def test_missing_file_and_file_as_text(client: TestClient) -> None:
    _assert_openai_error(client.post(TRANSCRIBE, data={"model": "whisper-1"}), 400, "file")
    _assert_openai_error(
        client.post(TRANSCRIBE, data={"model": "whisper-1", "file": "not a file"}), 400, "file"
    )


def test_json_body_instead_of_multipart(client: TestClient) -> None:
    _assert_openai_error(client.post(TRANSCRIBE, json={"model": "whisper-1"}), 400)


def test_oversize_by_content_length_is_refused_at_once(strict_client: TestClient) -> None:
    body = b"x" * (SMALL_LIMIT + 100_000)
    response = strict_client.post(
        TRANSCRIBE, content=body, headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert _assert_openai_error(response, 413)["code"] == "file_too_large"


def test_oversize_without_content_length_is_counted_while_streaming(
    strict_client: TestClient,
) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        yield head
        for _ in range(100):
            sent += 64_000
            yield b"\0" * 64_000

    response = strict_client.post(
        TRANSCRIBE, content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert _assert_openai_error(response, 413)["code"] == "file_too_large"


def test_file_over_the_limit_inside_the_overhead_slack(strict_client: TestClient) -> None:
    payload = b"\0" * (SMALL_LIMIT + 10)
    response = strict_client.post(
        TRANSCRIBE, files={"file": ("a.wav", payload)}, data={"model": "whisper-1"}
    )
    assert _assert_openai_error(response, 413, "file")["code"] == "file_too_large"


def test_sync_duration_cap(strict_client: TestClient) -> None:
    clip = next(c for c in ENGLISH if c.duration_s > 5 and c.path.stat().st_size < SMALL_LIMIT)
    assert _assert_openai_error(_post(strict_client, clip.path), 413)["code"] == "audio_too_long"


def test_models(client: TestClient) -> None:
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["tiny.en"]
    assert client.get("/v1/models/whisper-1").json()["id"] == "whisper-1"
    _assert_openai_error(client.get("/v1/models/gpt-4"), 404, "model")


def test_health_probes(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model": "ok", "database": "ok", "auth": "off"}


def test_unknown_route_and_method_use_the_openai_body(client: TestClient) -> None:
    _assert_openai_error(client.get("/v1/nothing"), 404)
    _assert_openai_error(client.get(TRANSCRIBE), 405)


@pytest.mark.parametrize(
    "raw", [b"\xff\xfe", b"a" * 10_000, b"esc\x1b[2Jcontrol", b"caf\xc3\xa9", b"tab\there"]
)
def test_any_request_id_bytes_still_get_an_answer(client: TestClient, raw: bytes) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": raw})
    assert response.status_code == 200


@pytest.fixture(scope="module")
def short_window_app(settings: Settings, tiny_engine: WhisperEngine) -> FastAPI:
    slow = settings.model_copy(
        update={"server": settings.server.model_copy(update={"slow_body_window_s": 0.5})}
    )
    migrate(slow.database_url)
    runtime = build_resources(slow, nudge=lambda: None)
    return create_app(build_ingress_resources(runtime, LocalTranscriber(tiny_engine)))


@pytest.mark.parametrize("path", ["/v1/jobs", TRANSCRIBE])
async def test_a_stalled_upload_is_cut_off_with_408(short_window_app: FastAPI, path: str) -> None:
    app = short_window_app

    async def stalled() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.flac"\r\n\r\n'
        await asyncio.sleep(30)  # the client goes quiet: nothing more arrives
        yield b"never"

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        async with asyncio.timeout(10):
            response = await http.post(
                path,
                content=stalled(),
                headers={"content-type": "multipart/form-data; boundary=b"},
            )
    assert _assert_openai_error(response, 408)["code"] == "request_timeout"
