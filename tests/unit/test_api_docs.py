"""`/docs` works without the internet, and the schema it shows declares every response.

Headless Chromium (Debian's `chromium`; .ci/run installs it) loads the page with every
host but loopback unresolvable, runs Swagger UI's script, and dumps the rendered DOM: the
operations must be listed. `--dump-dom` with a virtual time budget is the lightest way
that runs the page's JavaScript (no driver, no extra package).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from deployments.dependencies import build_ingress_resources
from deployments.fastapi_app import create_app
from services.core.settings import Settings
from services.migrations import upgrade as migrate
from services.resources import build_resources
from services.transcription.engine import WhisperEngine
from services.transcription.local import LocalTranscriber
from tests.live_app import serve_on_loopback

OPERATIONS = {
    ("POST", "/v1/audio/transcriptions"),
    ("POST", "/v1/audio/translations"),
    ("POST", "/v1/audio/language"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("DELETE", "/v1/jobs/{job_id}"),
    ("GET", "/v1/jobs/{job_id}/result"),
    ("GET", "/v1/jobs/{job_id}/events"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches"),
    ("GET", "/v1/batches/{batch_id}"),
    ("DELETE", "/v1/batches/{batch_id}"),
    ("GET", "/v1/batches/{batch_id}/logs"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
}
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"


@pytest.fixture(scope="module")
def app(settings: Settings, tiny_engine: WhisperEngine) -> FastAPI:
    migrate(settings.database_url)
    runtime = build_resources(settings, nudge=lambda: None)
    return create_app(build_ingress_resources(runtime, LocalTranscriber(tiny_engine)))


@pytest.fixture(scope="module")
def base_url(app: FastAPI) -> Iterator[str]:
    with serve_on_loopback(app) as url:
        yield url


def _rendered_operations(url: str) -> set[tuple[str, str]]:
    chromium = shutil.which("chromium")
    assert chromium, "headless Chromium is needed: apt-get install -y chromium"
    dom = subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            OFFLINE, "--virtual-time-budget=20000", "--dump-dom", url,
        ],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    blocks = re.findall(
        r'opblock-summary-method">(\w+)<.*?data-path="([^"]+)"', dom, flags=re.DOTALL
    )
    return {(method, path) for method, path in blocks}


def test_docs_render_offline_with_every_operation(base_url: str) -> None:
    page = httpx.get(f"{base_url}/docs").text
    assert not re.search(r'(src|href)="https?://', page), "the page must load nothing remote"
    assert _rendered_operations(f"{base_url}/docs") == OPERATIONS


def test_the_assets_come_from_the_app(base_url: str) -> None:
    script = httpx.get(f"{base_url}/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200
    assert len(script.content) > 500_000


def _responses(schema: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    responses: dict[str, Any] = schema["paths"][path][method.lower()]["responses"]
    return responses


def test_every_response_shape_and_status_is_declared(app: FastAPI) -> None:
    schema = app.openapi()
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for method, path in OPERATIONS:
        responses = _responses(schema, method, path)
        assert "422" not in responses, f"{method} {path} documents a 422 it never sends"
        if path.startswith("/v1"):
            assert responses["4XX"]["content"]["application/json"]["schema"] == error
    upload = _responses(schema, "POST", "/v1/audio/transcriptions")
    assert {"200", "400", "408", "413", "415", "503", "507"} <= set(upload)
    assert upload["413"]["content"]["application/json"]["schema"] == error
    ok = upload["200"]["content"]
    assert {"application/json", "text/plain", "text/vtt", "application/x-subrip"} <= set(ok)
    assert "text/event-stream" in ok  # stream=true
    shapes = {s["$ref"].rsplit("/", 1)[1] for s in ok["application/json"]["schema"]["anyOf"]}
    assert shapes == {"TranscriptionJSON", "TranscriptionVerbose"}
    submitted = _responses(schema, "POST", "/v1/jobs")["202"]
    assert submitted["content"]["application/json"]["schema"]["$ref"].endswith("/JobView")
    assert "Location" in submitted["headers"]
    page = _responses(schema, "GET", "/v1/jobs")["200"]["content"]["application/json"]
    assert page["schema"]["$ref"].endswith("/JobPage")
    result = _responses(schema, "GET", "/v1/jobs/{job_id}/result")
    assert {"200", "404", "409", "410"} <= set(result)
    batch = _responses(schema, "POST", "/v1/batches")
    assert {"201", "400", "403", "429", "503"} <= set(batch)
    assert batch["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/BatchView")
    assert "Location" in batch["201"]["headers"]
    logs = _responses(schema, "GET", "/v1/batches/{batch_id}/logs")
    assert "text/plain" in logs["200"]["content"]
    assert logs["404"]["content"]["application/json"]["schema"] == error
    form = schema["components"]["schemas"]["TranscriptionRequest"]["properties"]
    assert {"model", "task", "language", "prompt", "response_format", "temperature"} <= set(form)
