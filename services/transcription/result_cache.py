"""Transcripts of identical audio with identical options, reused instead of recomputed.

Keyed by the audio's sha256, the model and every option that changes the output. Stored
in the shared cache (Redis) or this process's memory; the benchmarks switch it off
(`RAYSCRIBE_CACHE__ENABLED=false`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from services.core.cache import Cache
from services.transcription.models import (
    Transcript,
    TranscriptionOptions,
    transcript_from_dict,
    transcript_to_dict,
)


class ResultCache:
    def __init__(self, cache: Cache, *, model_id: str, enabled: bool, ttl_s: int) -> None:
        self._cache = cache
        self._model_id = model_id
        self.enabled = enabled
        self._ttl_s = ttl_s

    def _key(self, audio_sha256: str, options: TranscriptionOptions) -> str:
        described = json.dumps(asdict(options), sort_keys=True)
        digest = hashlib.sha256(f"{self._model_id}|{described}".encode()).hexdigest()[:32]
        return f"rayscribe:result:{audio_sha256}:{digest}"

    async def get(self, audio_sha256: str, options: TranscriptionOptions) -> Transcript | None:
        if not self.enabled:
            return None
        raw = await self._cache.get(self._key(audio_sha256, options))
        return transcript_from_dict(json.loads(raw)) if raw else None

    async def put(
        self, audio_sha256: str, options: TranscriptionOptions, transcript: Transcript
    ) -> None:
        if self.enabled:
            raw = json.dumps(transcript_to_dict(transcript))
            await self._cache.set(self._key(audio_sha256, options), raw, self._ttl_s)


def sha256_of(file: object) -> str:
    """Hash a seekable binary file from its start, leaving it rewound."""
    digest = hashlib.sha256()
    file.seek(0)  # type: ignore[attr-defined]
    while chunk := file.read(1024 * 1024):  # type: ignore[attr-defined]
        digest.update(chunk)
    file.seek(0)  # type: ignore[attr-defined]
    return digest.hexdigest()
