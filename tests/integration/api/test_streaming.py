"""`stream=true` on the Serve app, through the official `openai` client and raw HTTP.

A recording of read sentences (built at test time from the committed clips) is long enough
for several work items, so the stream has several deltas and the ramp matters.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import DISTINCT, HOSTILE, word_error_rate
from tests.long_audio import Recording, build

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(serve_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{serve_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recording, Path]:
    """About 100 s of sentences with pauses: several work items."""
    recording = build(100.0, [])
    return recording, recording.write_flac(tmp_path_factory.mktemp("stream") / "talk.flac")


def _events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    event = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: ") and event is not None:
            yield event, json.loads(line[len("data: ") :])
            event = None


def test_stream_deltas_then_done_match_the_json_answer(
    client: openai.OpenAI, recording: tuple[Recording, Path]
) -> None:
    spoken, path = recording
    events = list(client.audio.transcriptions.create(model="whisper-1", file=path, stream=True))
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert [e.type for e in events][-1] == "transcript.text.done"
    assert len(deltas) >= 3, "a 100 s recording of many sentences streams in pieces"
    done = events[-1]
    assert done.type == "transcript.text.done"
    assert "".join(d.delta for d in deltas).strip() == done.text
    assert word_error_rate(spoken.text, done.text) < 0.15
    plain = client.audio.transcriptions.create(model="whisper-1", file=path)
    # Packing can differ (the ramp sends the first items alone), the words hardly.
    assert word_error_rate(plain.text, done.text) < 0.05
    assert done.usage is not None
    assert done.usage.model_dump()["type"] == "duration"  # ours: billed by audio length


def test_first_delta_comes_before_the_rest_is_decoded(
    serve_url: str,
    transcriber_stats: Callable[[], dict[str, Any]],
    recording: tuple[Recording, Path],
) -> None:
    """When the first delta arrives, the replica has not decoded all of the request's
    windows yet (counted by the replica, not by a clock)."""
    _, path = recording
    before = transcriber_stats()["windows"]
    at_first: int | None = None
    with (
        httpx.Client(timeout=300) as http,
        path.open("rb") as f,
        http.stream(
            "POST",
            f"{serve_url}/v1/audio/transcriptions",
            files={"file": (path.name, f)},
            data={"model": "whisper-1", "stream": "true"},
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        kinds = []
        for kind, _body in _events(response):
            if kind == "transcript.text.delta" and at_first is None:
                at_first = transcriber_stats()["windows"] - before
            kinds.append(kind)
    total = transcriber_stats()["windows"] - before
    assert kinds[-1] == "transcript.text.done"
    assert at_first is not None
    assert at_first < total, f"first delta after {at_first} of {total} windows"


def test_stream_with_logprobs(client: openai.OpenAI) -> None:
    clip = DISTINCT[0]
    events = list(
        client.audio.transcriptions.create(
            model="whisper-1", file=clip.path, stream=True, include=["logprobs"]
        )
    )
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert deltas
    for delta in deltas:
        assert delta.logprobs, "every delta carries its tokens' log-probabilities"
        joined = "".join(lp.token or "" for lp in delta.logprobs)
        assert joined.strip() == delta.delta.strip()
        assert all((lp.logprob or 0.0) <= 0.0 for lp in delta.logprobs)
        assert all(bytes(lp.bytes or []).decode() == lp.token for lp in delta.logprobs)
    done = events[-1]
    assert done.type == "transcript.text.done"
    assert done.logprobs is not None
    assert len(done.logprobs) == sum(len(d.logprobs or []) for d in deltas)


def test_client_that_disconnects_stops_its_work(
    serve_url: str, transcriber_stats: Callable[[], dict[str, Any]], tmp_path: Path
) -> None:
    """A 6-minute recording abandoned after its first delta: its later windows leave the
    queue, so the replica decodes far fewer windows than the recording needs."""
    recording = build(360.0, [])
    path = recording.write_flac(tmp_path / "long.flac")
    speech_s = sum(p.end_s - p.start_s for p in recording.placed)
    before = transcriber_stats()["windows"]
    with (
        httpx.Client(timeout=300) as http,
        path.open("rb") as f,
        http.stream(
            "POST",
            f"{serve_url}/v1/audio/transcriptions",
            files={"file": (path.name, f)},
            data={"model": "whisper-1", "stream": "true"},
        ) as response,
    ):
        assert response.status_code == 200
        for kind, _ in _events(response):
            if kind == "transcript.text.delta":
                break  # leaving the block closes the connection
    deadline = time.monotonic() + 120
    while transcriber_stats()["engine_busy_s"] is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # a batch already handed over may still finish
    while transcriber_stats()["engine_busy_s"] is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    decoded = transcriber_stats()["windows"] - before
    needed = speech_s / 28
    assert decoded < needed / 2, f"{decoded} windows decoded for {needed:.1f} needed"


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"stream": "true", "response_format": "srt"}, "response_format"),
        ({"stream": "true", "response_format": "verbose_json"}, "response_format"),
        ({"stream": "maybe"}, "stream"),
    ],
)
def test_stream_field_errors_are_400_before_any_event(
    http: httpx.Client, data: dict[str, str], param: str
) -> None:
    with DISTINCT[0].path.open("rb") as f:
        response = http.post(
            "/v1/audio/transcriptions",
            files={"file": (DISTINCT[0].name, f)},
            data={"model": "whisper-1", **data},
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("path", ["/v1/audio/translations", "/v1/jobs"])
def test_only_transcriptions_stream(http: httpx.Client, path: str) -> None:
    with DISTINCT[0].path.open("rb") as f:
        response = http.post(
            path,
            files={"file": (DISTINCT[0].name, f)},
            data={"model": "whisper-1", "stream": "true"},
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "stream"


def test_bad_audio_with_stream_is_a_plain_400(http: httpx.Client) -> None:
    """What can be refused is refused before the stream starts: a JSON error, not events."""
    bad = next(p for p, status in HOSTILE.items() if status == 400)
    with bad.open("rb") as f:
        response = http.post(
            "/v1/audio/transcriptions",
            files={"file": (bad.name, f)},
            data={"model": "whisper-1", "stream": "true"},
        )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["type"] == "invalid_request_error"
