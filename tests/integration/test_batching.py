"""Batching across requests in the real Serve app: accuracy, isolation, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from services.transcription.audio import decode_audio
from services.transcription.domain import SAMPLE_RATE, TranscriptionOptions
from services.transcription.engine import WhisperEngine
from tests.audio_variants import encode_flac
from tests.conftest import DISTINCT, ENGLISH, Clip, report, word_error_rate, words_of

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
    time.sleep(2.0)
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
