"""Job audio on S3 (`S3AudioStorage`) against a real S3-protocol server: what the jobs
path does with its store (save while hashing, open for the decoder, scan, delete)."""

from __future__ import annotations

import asyncio
import hashlib
import io

import pytest

from services.core.s3_storage import S3AudioStorage
from services.core.settings import Settings
from services.core.storage_settings import StorageSettings
from services.resources import build_storage
from services.transcription.audio import decode_audio
from tests.conftest import ENGLISH
from tests.s3_server import S3Server


class _Breaks(io.RawIOBase):
    """An upload that fails after some bytes (a client that went away)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._data.read(min(size, 100_000) if size > 0 else 100_000)
        if not chunk:
            raise ConnectionResetError("the client went away")
        return chunk


def test_job_audio_round_trips_through_s3(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket("jobs")
    settings = Settings(
        _env_file=None,
        storage=StorageSettings(
            backend="s3",
            s3_endpoint_url=s3_server.endpoint_url,
            s3_region="us-east-1",
            s3_audio_prefix=f"s3://{bucket}/audio",
        ),
    )
    storage = build_storage(settings)
    assert isinstance(storage, S3AudioStorage)
    data = ENGLISH[0].path.read_bytes()
    stored = asyncio.run(storage.save(io.BytesIO(data)))
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    with storage.open(stored.key) as file:
        decoded = decode_audio(file, max_duration_s=60)  # FFmpeg reads ranges from S3
    assert decoded.shape[0] == decode_audio(ENGLISH[0].path, max_duration_s=60).shape[0]
    assert [k.key for k in storage.scan()] == [stored.key]

    with pytest.raises(ConnectionResetError):
        asyncio.run(storage.save(_Breaks(data * 20)))  # type: ignore[arg-type]
    assert [k.key for k in storage.scan()] == [stored.key], "a failed upload leaves nothing"

    asyncio.run(storage.delete(stored.key))
    asyncio.run(storage.delete(stored.key))  # idempotent
    assert list(storage.scan()) == []
    with pytest.raises(FileNotFoundError):
        storage.open(stored.key)


def test_s3_backend_needs_a_prefix() -> None:
    with pytest.raises(ValueError, match="s3_audio_prefix"):
        build_storage(Settings(_env_file=None, storage=StorageSettings(backend="s3")))
