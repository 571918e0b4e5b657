"""Transcripts of identical audio with identical options, reused instead of recomputed.

Keyed by the audio's sha256, every option that changes the output and the version of
everything that computes it: the decoder (`DECODER_VERSION`), faster-whisper, CTranslate2,
the model and the engine settings that change results. A fixed decoder or a new engine
therefore never serves a transcript an older one computed. Stored in Redis when configured
(this process's LRU while Redis is down) or in this process's LRU; the benchmarks switch
it off (`RAYSCRIBE_CACHE__ENABLED=false`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from functools import cache
from importlib import metadata
from typing import Protocol

from services.core.metrics import telemetry
from services.core.settings import WhisperSettings
from services.transcription import audio
from services.transcription.domain import (
    Transcript,
    TranscriptionOptions,
    transcript_from_dict,
    transcript_to_dict,
)


class ResultStore(Protocol):
    """What the result cache needs from a cache: a `Cache` or a `FallbackCache`."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, ttl_s: int) -> None: ...


@cache
def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def engine_version(model_id: str, whisper: WhisperSettings | None = None) -> str:
    """Everything besides the request options that decides what a transcript says."""
    parts = [
        f"decoder={audio.DECODER_VERSION}",
        f"faster-whisper={_package_version('faster-whisper')}",
        f"ctranslate2={_package_version('ctranslate2')}",
        f"model={model_id}",
    ]
    if whisper is not None:
        parts += [
            f"weights={whisper.model}",  # a directory's full path, not just its name
            f"device={whisper.device}",
            f"compute={whisper.compute_type}",
            f"beam={whisper.beam_size}",
        ]
    return ";".join(parts)


class ResultCache:
    def __init__(
        self,
        store: ResultStore,
        *,
        model_id: str,
        enabled: bool,
        ttl_s: int,
        engine: str | None = None,
    ) -> None:
        self._store = store
        self.engine = engine if engine is not None else engine_version(model_id)
        self.enabled = enabled
        self._ttl_s = ttl_s

    def _key(self, audio_sha256: str, options: TranscriptionOptions) -> str:
        described = json.dumps(asdict(options), sort_keys=True)
        digest = hashlib.sha256(f"{self.engine}|{described}".encode()).hexdigest()[:32]
        return f"rayscribe:result:{audio_sha256}:{digest}"

    async def get(self, audio_sha256: str, options: TranscriptionOptions) -> Transcript | None:
        if not self.enabled:
            return None
        raw = await self._store.get(self._key(audio_sha256, options))
        telemetry.result_cache(hit=bool(raw))
        return transcript_from_dict(json.loads(raw)) if raw else None

    async def put(
        self, audio_sha256: str, options: TranscriptionOptions, transcript: Transcript
    ) -> None:
        if self.enabled:
            raw = json.dumps(transcript_to_dict(transcript))
            await self._store.set(self._key(audio_sha256, options), raw, self._ttl_s)


def sha256_of(file: object) -> str:
    """Hash a seekable binary file from its start, leaving it rewound."""
    digest = hashlib.sha256()
    file.seek(0)  # type: ignore[attr-defined]
    while chunk := file.read(1024 * 1024):  # type: ignore[attr-defined]
        digest.update(chunk)
    file.seek(0)  # type: ignore[attr-defined]
    return digest.hexdigest()
