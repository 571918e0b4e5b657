"""Preparing a request while VAD is still listening: items as soon as they are final.

`WhisperEngine.prepare` runs VAD over the whole waveform before the first item exists (1.3 s
for 8 minutes on 2 cores). `prepare_incremental` walks the waveform in blocks instead:
`StreamingVad` hands out each speech clip once it is final and `ItemSplitter` each item once
no later clip can change it, so the first items can be decoded while VAD goes on. The items
are exactly those `prepare` makes (the clips are, and the grouping is the same code); the
language of a multilingual model is detected on the first item, as `prepare` does, and
written into every item before it leaves.

Synchronous and CPU-bound: the Whisper replica runs it on a worker thread and feeds the
items to the batch queue as they come (`stop` ends it early when the client went away).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from services.transcription.domain import (
    SAMPLE_RATE,
    Task,
    TranscriptionOptions,
    Waveform,
)
from services.transcription.packing import ItemSplitter, WorkItem
from services.transcription.whisper_adapter import StreamingVad

BLOCK_S = 10.0
"""How much audio VAD takes per step: small enough that the first item leaves early."""


@dataclass(frozen=True)
class Heading:
    """Sent before the first item (or alone, for audio without speech)."""

    language: str
    language_probability: float
    duration_s: float


class Detector(Protocol):
    """What this needs of the engine."""

    @property
    def multilingual(self) -> bool: ...

    def detect_language(self, speech: Waveform) -> tuple[str, float]: ...


def prepare_incremental(
    engine: Detector,
    audio: Waveform,
    options: TranscriptionOptions,
    *,
    block_s: float = BLOCK_S,
    stop: threading.Event | None = None,
) -> Iterator[Heading | WorkItem]:
    """A `Heading`, then the request's work items in time order, as VAD finds them."""
    decode = options.decode
    language, probability = decode.language or "en", 1.0
    if not engine.multilingual:
        decode = replace(decode, task=Task.TRANSCRIBE, language="en")
        language = "en"
    duration_s = audio.shape[0] / SAMPLE_RATE
    vad = StreamingVad(options.vad)
    splitter = ItemSplitter(decode, word_timestamps=options.word_timestamps)
    detect = engine.multilingual and decode.language is None
    headed = False

    def finished(items: list[WorkItem]) -> Iterator[Heading | WorkItem]:
        nonlocal headed, decode, language, probability
        for item in items:
            if not headed:
                if detect:
                    language, probability = engine.detect_language(item.speech)
                    decode = replace(decode, language=language)
                yield Heading(language, probability, duration_s)
                headed = True
            if detect:
                item = replace(item, decode=decode)
            item.logprobs = options.logprobs
            yield item

    step = max(1, int(block_s * SAMPLE_RATE))
    for start in range(0, audio.shape[0], step):
        if stop is not None and stop.is_set():
            return
        for clip in vad.feed(audio[start : start + step]):
            yield from finished(splitter.add(clip, audio))
    for clip in vad.finish():
        yield from finished(splitter.add(clip, audio))
    yield from finished(splitter.finish(audio))
    if not headed:
        yield Heading(language, probability, duration_s)


async def prepare_in_background(
    engine: Detector, audio: Waveform, options: TranscriptionOptions, stop: threading.Event
) -> AsyncIterator[Heading | WorkItem]:
    """`prepare_incremental` on a worker thread, its output as an async iterator (the event
    loop stays free for the batches). Closing the iterator sets `stop`; the thread ends at
    its next block."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Heading | WorkItem | BaseException | None] = asyncio.Queue()

    def produce() -> None:
        try:
            for event in prepare_incremental(engine, audio, options, stop=stop):
                loop.call_soon_threadsafe(queue.put_nowait, event)
        except BaseException as exc:  # handed to the caller, raised there
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    worker = asyncio.ensure_future(asyncio.to_thread(produce))
    try:
        while (event := await queue.get()) is not None:
            if isinstance(event, BaseException):
                raise event
            yield event
    finally:
        stop.set()
        worker.cancel()
