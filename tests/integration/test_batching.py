"""Batching across requests in the real Serve app: accuracy, isolation, cancellation,
and its one config (no start-up warning from Ray, live changes without failures)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from deployments.transcriber import BatchingConfig
from services.transcription.audio import decode_audio
from services.transcription.domain import SAMPLE_RATE, TranscriptionOptions
from services.transcription.engine import WhisperEngine
from services.transcription.packing import count_windows
from tests import serve_local as local
from tests.audio_variants import encode_flac
from tests.conftest import DISTINCT, ENGLISH, Clip, report, word_error_rate, words_of
from tests.integration import serve_admin
from tests.integration.conftest import MULTI_PREFIX

pytestmark = pytest.mark.integration


async def _transcribe_all(url: str, clips: list[Clip], **data: Any) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(clip: Clip) -> dict[str, Any]:
            response = await client.post(
                "/v1/audio/transcriptions",
                files={"file": (clip.name, clip.path.read_bytes())},
                data={"model": "whisper-1", **data},
            )
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        return await asyncio.gather(*(one(clip) for clip in clips))


def test_concurrent_requests_share_batches_without_losing_accuracy(
    serve_url: str, tiny_engine: WhisperEngine, transcriber_stats: Callable[[], dict[str, Any]]
) -> None:
    before = transcriber_stats()
    results = asyncio.run(
        _transcribe_all(
            serve_url,
            ENGLISH,
            response_format="verbose_json",
            **{"timestamp_granularities[]": ["word", "segment"]},
        )
    )
    after = transcriber_stats()
    batches = after["batches"] - before["batches"]
    windows = after["windows"] - before["windows"]
    assert windows < len(ENGLISH), "requests never shared a window"
    sequential = [
        tiny_engine.transcribe(decode_audio(c.path, max_duration_s=600), TranscriptionOptions())
        for c in ENGLISH
    ]
    wer_sequential = np.mean(
        [word_error_rate(c.text, t.text) for c, t in zip(ENGLISH, sequential, strict=True)]
    )
    wer_concurrent = np.mean(
        [word_error_rate(c.text, r["text"]) for c, r in zip(ENGLISH, results, strict=True)]
    )
    report(
        f"service under {len(ENGLISH)} concurrent requests: WER {wer_concurrent:.3f} vs "
        f"{wer_sequential:.3f} sequential; {batches} batches, {windows} windows"
    )
    assert wer_concurrent <= wer_sequential + 0.02
    for clip, body in zip(ENGLISH, results, strict=True):
        for item in [*body["segments"], *body["words"]]:
            assert 0 <= item["start"] <= item["end"] <= clip.duration_s + 0.01


def test_concurrent_callers_never_get_each_others_words(serve_url: str) -> None:
    for _ in range(3):
        results = asyncio.run(_transcribe_all(serve_url, DISTINCT))
        for index, (clip, body) in enumerate(zip(DISTINCT, results, strict=True)):
            others = set().union(*(words_of(c.text) for j, c in enumerate(DISTINCT) if j != index))
            assert not words_of(body["text"]) & others, (clip.name, body["text"])


def test_a_caller_that_disconnects_leaves_the_batch(
    serve_url: str, tiny_engine: WhisperEngine, transcriber_stats: Callable[[], dict[str, Any]]
) -> None:
    # A long request keeps the replica busy with one batch for several seconds...
    gap = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    parts: list[np.ndarray] = []
    for clip in ENGLISH * 2:
        parts += [decode_audio(clip.path, max_duration_s=600), gap]
        if sum(p.shape[0] for p in parts) > 200 * SAMPLE_RATE:
            break
    long_audio = np.concatenate(parts)
    long_items = len(tiny_engine.prepare(long_audio, TranscriptionOptions()).items)
    before = transcriber_stats()

    def long_request() -> None:
        response = httpx.post(
            f"{serve_url}/v1/audio/transcriptions",
            files={"file": ("long.flac", encode_flac(long_audio))},
            data={"model": "whisper-1"},
            timeout=300,
        )
        assert response.status_code == 200

    worker = threading.Thread(target=long_request)
    worker.start()
    _wait_until(lambda: transcriber_stats()["engine_busy_s"] is not None)
    # ...while a second caller gives up before its turn comes.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{serve_url}/v1/audio/transcriptions",
            files={"file": (DISTINCT[0].name, DISTINCT[0].path.read_bytes())},
            data={"model": "whisper-1"},
            timeout=0.5,
        )
    worker.join()
    time.sleep(1.0)
    after = transcriber_stats()
    assert after["items"] - before["items"] == long_items, "the cancelled caller's work ran"


def _whisper_replica_logs() -> list[Path]:
    """The Serve log file of every WhisperTranscriber replica, in this Ray session's logs."""
    import ray
    from ray.serve.context import _get_global_client

    logs_dir = Path(ray._private.worker._global_node.get_logs_dir_path())
    details = _get_global_client().get_serve_details()
    paths = [
        logs_dir / replica["log_file_path"].lstrip("/")
        for app in details["applications"].values()
        for name, deployment in app["deployments"].items()
        if name.startswith("WhisperTranscriber")
        for replica in deployment["replicas"]
    ]
    # tiny.en in the main app; tiny.en and base in the two-model app
    assert len(paths) == 3, details["applications"].keys()
    return paths


def test_ray_prints_no_batching_warning_at_start(serve_url: str) -> None:
    # Serve builds a replica's batch queue, and checks its limits, on the first request.
    for prefix, model in (("", "whisper-1"), (MULTI_PREFIX, "tiny.en"), (MULTI_PREFIX, "base")):
        response = httpx.post(
            f"{serve_url}{prefix}/v1/audio/transcriptions",
            files={"file": (DISTINCT[0].name, DISTINCT[0].path.read_bytes())},
            data={"model": model},
            timeout=120,
        )
        assert response.status_code == 200, response.text
    for path in _whisper_replica_logs():
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        messages = [str(record.get("message", "")) for record in records]
        assert "Finished initializing replica." in messages, path
        assert any(m.startswith("CALL transcribe OK") for m in messages), path
        warnings = [
            m
            for r, m in zip(records, messages, strict=True)
            if "max_concurrent_batches" in m
            or (r.get("levelname") == "WARNING" and r.get("filename") == "batching.py")
        ]
        assert not warnings, (path, warnings)


@contextlib.contextmanager
def _whisper_user_config(user_config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Deploy the running main app with another batching config (a lightweight update, as
    `serve deploy` of an edited file does); yields the one in force before, restored after."""
    original = serve_admin.deployed_config()
    edited = copy.deepcopy(original)
    whisper = serve_admin.deployment_entry(edited, "WhisperTranscriber")
    before = dict(whisper["user_config"])
    whisper["user_config"] = user_config
    serve_admin.redeploy(edited)
    try:
        yield before
    finally:
        serve_admin.redeploy(original)
        local.wait_until_running(local.APP_NAME)


def _wait_until(condition: Callable[[], bool], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not true after {timeout_s} s"
        time.sleep(0.1)


def test_the_batching_config_changes_live_under_load_without_failures(
    serve_url: str, tiny_engine: WhisperEngine, transcriber_stats: Callable[[], dict[str, Any]]
) -> None:
    shipped = BatchingConfig.from_user_config(_shipped_user_config()).model_dump()
    assert transcriber_stats()["batching"] == shipped
    # About 60 s of speech in one request: several windows, one batch under the shipped config.
    gap = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    parts: list[np.ndarray] = []
    for clip in ENGLISH:
        parts += [decode_audio(clip.path, max_duration_s=600), gap]
        if sum(p.shape[0] for p in parts) > 60 * SAMPLE_RATE:
            break
    audio = np.concatenate(parts)
    windows = count_windows(tiny_engine.prepare(audio, TranscriptionOptions()).items)
    assert 2 <= windows <= shipped["max_batch_windows"]

    statuses: list[int] = []
    stop = threading.Event()

    def light_load(offset: int) -> None:
        with httpx.Client(base_url=serve_url, timeout=120) as client:
            index = offset
            while not stop.is_set():
                clip = DISTINCT[index % len(DISTINCT)]
                index += 1
                response = client.post(
                    "/v1/audio/transcriptions",
                    files={"file": (clip.name, clip.path.read_bytes())},
                    data={"model": "whisper-1"},
                )
                statuses.append(response.status_code)

    changed = {
        **shipped,
        "max_batch_windows": 1,
        "batch_wait_timeout_s": 0.02,
        "coalesce_max_wait_s": 0.2,
        "coalesce_quiet_s": 0.05,
    }
    clients = [threading.Thread(target=light_load, args=(n,)) for n in range(2)]
    for thread in clients:
        thread.start()
    try:
        _wait_until(lambda: len(statuses) >= 2)  # the load is flowing
        with _whisper_user_config(changed) as before:
            assert before == _shipped_user_config()
            _wait_until(lambda: transcriber_stats()["batching"] == changed)
            served_during_change = len(statuses)
            _wait_until(lambda: len(statuses) >= served_during_change + 2)
            stop.set()
            for thread in clients:
                thread.join()
            # One window per batch now: the long request runs as one batch per window.
            start = transcriber_stats()
            response = httpx.post(
                f"{serve_url}/v1/audio/transcriptions",
                files={"file": ("long.flac", encode_flac(audio))},
                data={"model": "whisper-1"},
                timeout=120,
            )
            assert response.status_code == 200, response.text
            end = transcriber_stats()
        _wait_until(lambda: transcriber_stats()["batching"] == shipped)
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    batches = end["batches"] - start["batches"]
    report(
        f"live batching reconfigure: {len(statuses)} requests under load "
        f"({served_during_change} of them before the change was seen), "
        f"{sum(s != 200 for s in statuses)} failed; {windows}-window request ran as "
        f"{batches} batches"
    )
    assert len(statuses) >= served_during_change + 2 >= 4
    assert all(status == 200 for status in statuses), statuses
    assert batches >= windows
    assert end["windows"] - start["windows"] <= batches


def _shipped_user_config() -> dict[str, Any]:
    config = yaml.safe_load(local.SERVE_CONFIG.read_text())
    (whisper,) = [
        d for d in config["applications"][0]["deployments"] if d["name"] == "WhisperTranscriber"
    ]
    user_config: dict[str, Any] = whisper["user_config"]
    return user_config
