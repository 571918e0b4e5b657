"""An in-process `Transcriber`: the engine on a worker thread, one request at a time.

Used by unit tests and tools that run without Ray; the Serve deployment is the batched,
scaled-out implementation of the same protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

from services.transcription.domain import Transcript, TranscriptionOptions, Waveform
from services.transcription.engine import WhisperEngine
from services.transcription.packing import SHARED_WINDOW_SAMPLES, ItemResult, WorkItem
from services.transcription.streaming import StreamEvent, StreamStart, ramped_results

LOCAL_MAX_WINDOWS = 8
"""Most windows in flight for a streamed request in process (the deployment's default)."""


class LocalTranscriber:
    def __init__(self, engine: WhisperEngine) -> None:
        self._engine = engine
        self._lock = asyncio.Lock()

    async def transcribe(
        self, audio: Waveform, options: TranscriptionOptions, *, background: bool = False
    ) -> Transcript:
        async with self._lock:
            return await asyncio.to_thread(self._engine.transcribe, audio, options)

    async def transcribe_stream(
        self, audio: Waveform, options: TranscriptionOptions
    ) -> AsyncIterator[StreamEvent]:
        """The replica's streaming protocol in process: items run in ramped groups."""
        async with self._lock:
            prepared = await asyncio.to_thread(self._engine.prepare, audio, options)
        yield StreamStart(
            language=prepared.language,
            language_probability=prepared.language_probability,
            duration_s=prepared.duration_s,
            items=len(prepared.items),
        )

        def submit(items: list[WorkItem]) -> list[Awaitable[ItemResult]]:
            run = asyncio.ensure_future(self._run(items))
            return [_nth(run, k) for k in range(len(items))]

        async for done in ramped_results(
            prepared.items, submit, max_samples=LOCAL_MAX_WINDOWS * SHARED_WINDOW_SAMPLES
        ):
            yield done

    async def _run(self, items: list[WorkItem]) -> list[ItemResult]:
        async with self._lock:
            return await asyncio.to_thread(self._engine.run, items)

    async def detect_languages(self, audio: Waveform) -> list[tuple[str, float]]:
        async with self._lock:
            return await asyncio.to_thread(self._engine.language_probabilities, audio)

    async def ready(self) -> bool:
        return True


async def _nth(run: asyncio.Future[list[ItemResult]], index: int) -> ItemResult:
    return (await asyncio.shield(run))[index]
