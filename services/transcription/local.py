"""An in-process `Transcriber`: the engine on a worker thread, one request at a time.

Used by unit tests and tools that run without Ray; the Serve deployment is the batched,
scaled-out implementation of the same protocol.
"""

from __future__ import annotations

import asyncio

from services.transcription.domain import Transcript, TranscriptionOptions, Waveform
from services.transcription.engine import WhisperEngine


class LocalTranscriber:
    def __init__(self, engine: WhisperEngine) -> None:
        self._engine = engine
        self._lock = asyncio.Lock()

    async def transcribe(
        self, audio: Waveform, options: TranscriptionOptions, *, background: bool = False
    ) -> Transcript:
        async with self._lock:
            return await asyncio.to_thread(self._engine.transcribe, audio, options)

    async def ready(self) -> bool:
        return True
