"""Where uploaded audio lives until its job is done and its retention passes.

`AudioStorage` is the seam a shared or object store implements; `LocalAudioStorage` keeps
files under `<data_dir>/audio`, written through a temp file and an atomic rename, hashed
(sha256) while they stream in, never held in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

_COPY_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StoredAudio:
    key: str
    size: int
    sha256: str


class AudioStorage(Protocol):
    async def save(self, source: BinaryIO) -> StoredAudio: ...

    def open(self, key: str) -> BinaryIO: ...

    async def delete(self, key: str) -> None: ...


class LocalAudioStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root / key[:2] / key

    async def save(self, source: BinaryIO) -> StoredAudio:
        return await asyncio.to_thread(self._save, source)

    def _save(self, source: BinaryIO) -> StoredAudio:
        key = uuid.uuid4().hex
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload.")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(_COPY_CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredAudio(key=key, size=size, sha256=digest.hexdigest())

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, True)
