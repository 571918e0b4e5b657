"""Streaming without Ray: the submission ramp, the ordered results, the request's new
fields, and the event stream of the app on the in-process engine (the `openai` client)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Iterator

import numpy as np
import openai
import pytest

from deployments.dependencies import build_ingress_resources
from deployments.fastapi_app import create_app
from services.core.errors import InvalidRequestError
from services.core.settings import Settings
from services.migrations import upgrade as migrate
from services.resources import build_resources
from services.transcription.audio import decode_audio
from services.transcription.domain import (
    DecodeOptions,
    Segment,
    Transcript,
    TranscriptionOptions,
    VadSettings,
    Waveform,
)
from services.transcription.engine import WhisperEngine
from services.transcription.incremental import Heading, prepare_incremental
from services.transcription.local import LocalTranscriber
from services.transcription.packing import SHARED_WINDOW_SAMPLES, ItemResult, Piece, WorkItem
from services.transcription.request import TranscriptionRequest
from services.transcription.streaming import (
    ItemDone,
    StreamEvent,
    StreamStart,
    SubmissionRamp,
    ramped_results,
)
from services.transcription.whisper_adapter import StreamingVad, speech_clips
from tests.conftest import DISTINCT
from tests.live_app import serve_on_loopback
from tests.long_audio import build


def _item(seconds: float) -> WorkItem:
    samples = int(seconds * 16_000)
    return WorkItem(
        speech=np.zeros(samples, dtype=np.float32),
        pieces=[Piece(0, 0, samples)],
        decode=DecodeOptions(),
    )


def _segment(text: str, start: float) -> Segment:
    return Segment(0, 0, start, start + 1, text, [], 0.0, -0.1, 1.0, 0.0)


# -- the ramp --------------------------------------------------------------------------------


def test_ramp_sends_one_window_first_then_doubles() -> None:
    items = [_item(10) for _ in range(12)]  # 10 s each: two per 28 s window
    ramp = SubmissionRamp(items, max_samples=4 * SHARED_WINDOW_SAMPLES)
    first = ramp.take()
    assert first == [0, 1]
    assert ramp.take() == []  # nothing more until results come back
    ramp.returned(first)
    second = ramp.take()
    assert second == [2, 3, 4, 5, 6]  # 56 s of room
    ramp.returned(second)
    third = ramp.take()
    assert sum(items[i].samples for i in third) <= 4 * SHARED_WINDOW_SAMPLES
    assert third == list(range(7, 12))


def test_ramp_lets_an_oversized_item_through_alone() -> None:
    items = [_item(29.5), _item(29.5)]
    ramp = SubmissionRamp(items, max_samples=SHARED_WINDOW_SAMPLES)
    assert ramp.take() == [0]
    ramp.returned([0])
    assert ramp.take() == [1]


async def test_results_come_in_item_order_and_leaving_cancels_the_rest() -> None:
    items = [_item(20) for _ in range(6)]
    submitted: list[int] = []
    futures: dict[int, asyncio.Future[ItemResult]] = {}
    loop = asyncio.get_running_loop()

    def submit(batch: list[WorkItem]) -> list[Awaitable[ItemResult]]:
        out: list[Awaitable[ItemResult]] = []
        for item in batch:
            index = next(k for k, known in enumerate(items) if known is item)
            submitted.append(index)
            futures[index] = loop.create_future()
            out.append(futures[index])
        return out

    stream = ramped_results(items, submit, max_samples=8 * SHARED_WINDOW_SAMPLES)
    first = asyncio.ensure_future(anext(stream))
    for _ in range(5):  # the source is read by a task of its own
        await asyncio.sleep(0)
    assert submitted == [0]
    futures[0].set_result([_segment(" one", 0)])
    done = await first
    assert done.index == 0
    assert submitted == [0, 1, 2]  # doubled: 56 s
    futures[2].set_result([_segment(" three", 40)])  # out of order: held back
    second = asyncio.ensure_future(anext(stream))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not second.done()
    futures[1].set_result([_segment(" two", 20)])
    assert (await second).index == 1
    assert (await anext(stream)).index == 2
    await stream.aclose()  # the client went away
    assert all(futures[i].cancelled() for i in futures if i > 2)


async def test_a_failed_item_fails_the_stream() -> None:
    items = [_item(5)]

    def submit(batch: list[WorkItem]) -> list[Awaitable[ItemResult]]:
        failed: asyncio.Future[ItemResult] = asyncio.get_running_loop().create_future()
        failed.set_result(RuntimeError("model crashed"))
        return [failed]

    with pytest.raises(RuntimeError, match="model crashed"):
        async for _ in ramped_results(items, submit, max_samples=SHARED_WINDOW_SAMPLES):
            pass


# -- the request's new fields ---------------------------------------------------------------


def _request(**fields: object) -> TranscriptionRequest:
    return TranscriptionRequest.model_validate({"model": "whisper-1", **fields})


def test_chunking_strategy_spellings_map_onto_silero() -> None:
    bracketed = _request(
        **{
            "chunking_strategy[type]": "server_vad",
            "chunking_strategy[threshold]": "0.7",
            "chunking_strategy[prefix_padding_ms]": "100",
            "chunking_strategy[silence_duration_ms]": "900",
        }
    )
    as_json = _request(
        chunking_strategy=json.dumps(
            {
                "type": "server_vad",
                "threshold": 0.7,
                "prefix_padding_ms": 100,
                "silence_duration_ms": 900,
            }
        )
    )
    expected = VadSettings(threshold=0.7, speech_pad_ms=100, min_silence_duration_ms=900)
    assert bracketed.engine_options().vad == as_json.engine_options().vad == expected
    assert _request(chunking_strategy="auto").engine_options().vad == VadSettings()
    partial = _request(chunking_strategy=json.dumps({"type": "server_vad", "threshold": 0.3}))
    assert partial.engine_options().vad == VadSettings(threshold=0.3)


@pytest.mark.parametrize(
    "value",
    ["semantic", "{", json.dumps({"type": "server_vad", "threshold": -0.1}), json.dumps([1])],
)
def test_bad_chunking_strategy_is_refused(value: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        _request(chunking_strategy=value)
    assert refused.value.param == "chunking_strategy"


def test_fingerprint_of_old_fields_is_unchanged() -> None:
    """Idempotency keys stored before the new fields existed must still match."""
    request = _request(language="en", prompt="hi")
    legacy = json.dumps(
        {
            "task": "transcribe",
            "language": "en",
            "prompt": "hi",
            "temperature": 0.0,
            "response_format": "json",
            "timestamp_granularities": ["segment"],
        },
        sort_keys=True,
    )
    assert request.fingerprint("abc") == hashlib.sha256(f"abc|{legacy}".encode()).hexdigest()
    assert _request(hotwords="x").fingerprint("abc") != request.fingerprint("abc")


def test_keywords_become_hotwords() -> None:
    assert _request(**{"keywords[]": ["Kubernetes", "Ray"]}).hotwords == "Kubernetes Ray"
    assert _request(hotwords="  mine ", **{"keywords[]": ["theirs"]}).hotwords == "mine"


# -- the event stream, in process -------------------------------------------------------------


class _FailsMidway:
    """A transcriber (the `LiveTranscriber` seam) whose second item fails."""

    async def transcribe(
        self, audio: Waveform, options: TranscriptionOptions, *, background: bool = False
    ) -> Transcript:
        raise AssertionError("not used")

    async def ready(self) -> bool:
        return True

    async def detect_languages(self, audio: Waveform) -> list[tuple[str, float]]:
        return []

    async def transcribe_stream(
        self, audio: Waveform, options: TranscriptionOptions
    ) -> AsyncIterator[StreamEvent]:
        yield StreamStart("en", 1.0, len(audio) / 16_000, 2)
        yield ItemDone(0, [_segment(" First words.", 0.0)])
        raise RuntimeError("the replica lost its model")


def _client(settings: Settings, transcriber: object) -> Iterator[openai.OpenAI]:
    migrate(settings.database_url)
    runtime = build_resources(settings, nudge=lambda: None)
    app = create_app(build_ingress_resources(runtime, transcriber))  # type: ignore[arg-type]
    with serve_on_loopback(app) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def live_client(settings: Settings, tiny_engine: WhisperEngine) -> Iterator[openai.OpenAI]:
    yield from _client(settings, LocalTranscriber(tiny_engine))


def test_error_after_the_stream_started_is_an_error_event(settings: Settings) -> None:
    for client in _client(settings, _FailsMidway()):
        stream = client.audio.transcriptions.create(
            model="whisper-1", file=DISTINCT[0].path, stream=True
        )
        first = next(iter(stream))
        assert first.type == "transcript.text.delta"
        assert first.delta == "First words."
        with pytest.raises(openai.APIError) as failed:
            next(iter(stream))
        assert failed.value.body["type"] == "server_error"  # type: ignore[index]


def test_stream_in_process_matches_the_engine(
    live_client: openai.OpenAI, tiny_engine: WhisperEngine
) -> None:
    clip = DISTINCT[1]
    events = list(
        live_client.audio.transcriptions.create(model="whisper-1", file=clip.path, stream=True)
    )
    reference = tiny_engine.transcribe(
        decode_audio(clip.path, max_duration_s=600), TranscriptionOptions()
    )
    assert events[-1].type == "transcript.text.done"
    assert events[-1].text == reference.text
    assert "".join(e.delta for e in events[:-1]).strip() == reference.text  # type: ignore[union-attr]


# -- incremental VAD and items ------------------------------------------------------------------


def _recordings() -> list[Waveform]:
    rng = np.random.default_rng(7)
    talk = np.concatenate(list(build(90.0, []).samples()))
    packed = np.concatenate(list(build(70.0, [35.0], no_pause_s=30, gap_s=0.2).samples()))
    noise = (rng.standard_normal(16_000 * 12) * 0.05).astype(np.float32)
    clip = decode_audio(DISTINCT[0].path, max_duration_s=600)
    return [talk, packed, noise, clip, np.zeros(1024, np.float32), np.zeros(300, np.float32)]


@pytest.mark.parametrize(
    "vad", [VadSettings(), VadSettings(0.6, 200, 300), VadSettings(0.3, 0, 2000)], ids=str
)
def test_streaming_vad_finds_the_whole_file_clips(vad: VadSettings) -> None:
    for audio in _recordings():
        expected = speech_clips(audio, vad)
        for block in (16_000, 7_777):
            streaming = StreamingVad(vad)
            found = [
                c for s in range(0, len(audio), block) for c in streaming.feed(audio[s : s + block])
            ]
            assert found + streaming.finish() == expected


def test_incremental_items_equal_prepared_items(tiny_engine: WhisperEngine) -> None:
    for audio in _recordings()[:2]:
        options = TranscriptionOptions()
        expected = tiny_engine.prepare(audio, options).items
        events = list(prepare_incremental(tiny_engine, audio, options, block_s=7.0))
        assert isinstance(events[0], Heading)
        items = [e for e in events if isinstance(e, WorkItem)]
        assert [i.pieces for i in items] == [i.pieces for i in expected]
        assert all(np.array_equal(a.speech, b.speech) for a, b in zip(items, expected, strict=True))
