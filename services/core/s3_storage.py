"""Object storage: pyarrow's S3 filesystem from the settings, and job audio kept on S3.

`s3_filesystem` builds the one client both bulk runs and job audio use: any S3-compatible
endpoint (`storage.s3_endpoint_url`; unset means AWS), credentials from the standard AWS_*
environment variables (pyarrow reads them, as every AWS SDK does).

`S3AudioStorage` implements `AudioStorage` so the ingress and the trackers of several
nodes share job audio without a shared disk (`RAYSCRIBE_STORAGE__BACKEND=s3`). An upload
streams to a partial object while it is hashed, then is copied to its key and the partial
deleted: a failed upload leaves only a partial object (the sweeper finds it as an orphan),
never a key that looks complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from functools import lru_cache
from typing import BinaryIO, cast

import pyarrow.fs as pafs

from services.core.settings import StorageSettings
from services.core.storage import StoredAudio, StoredKey

_COPY_CHUNK_BYTES = 8 * 1024 * 1024
_PARTIAL_DIR = "partial"
S3_SCHEME = "s3://"


def s3_filesystem(storage: StorageSettings) -> pafs.S3FileSystem:
    return _s3(storage.s3_endpoint_url, storage.s3_region)


@lru_cache(maxsize=8)
def _s3(endpoint_url: str | None, region: str | None) -> pafs.S3FileSystem:
    options: dict[str, object] = {}
    if endpoint_url:
        scheme, _, host = endpoint_url.partition("://")
        options["endpoint_override"] = host.rstrip("/") if host else endpoint_url
        if host:
            options["scheme"] = scheme
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options)


def split_s3_url(url: str) -> str:
    """`s3://bucket/prefix` -> `bucket/prefix` (pyarrow's path); ValueError without a bucket."""
    if not url.startswith(S3_SCHEME) or not url[len(S3_SCHEME) :].strip("/"):
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    return url[len(S3_SCHEME) :].strip("/")


class S3AudioStorage:
    def __init__(self, fs: pafs.FileSystem, prefix: str) -> None:
        self._fs = fs
        self._prefix = prefix.strip("/")

    @classmethod
    def from_settings(cls, storage: StorageSettings) -> S3AudioStorage:
        if not storage.s3_audio_prefix:
            raise ValueError(
                "storage.backend=s3 needs storage.s3_audio_prefix (s3://bucket/prefix)"
            )
        return cls(s3_filesystem(storage), split_s3_url(storage.s3_audio_prefix))

    def _path(self, key: str) -> str:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"invalid storage key {key!r}")
        return f"{self._prefix}/{key[:2]}/{key}"

    def _partial(self, key: str) -> str:
        return f"{self._prefix}/{_PARTIAL_DIR}/{key}"

    async def save(self, source: BinaryIO) -> StoredAudio:
        return await asyncio.to_thread(self._save, source)

    def _save(self, source: BinaryIO) -> StoredAudio:
        key = uuid.uuid4().hex
        partial, path = self._partial(key), self._path(key)
        digest = hashlib.sha256()
        size = 0
        try:
            with self._fs.open_output_stream(partial) as out:
                while chunk := source.read(_COPY_CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            self._fs.copy_file(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                self._fs.delete_file(path)
            raise
        finally:
            with contextlib.suppress(OSError):
                self._fs.delete_file(partial)
        return StoredAudio(key=key, size=size, sha256=digest.hexdigest())

    def open(self, key: str) -> BinaryIO:
        # A seekable reader that fetches ranges as FFmpeg asks for them.
        return cast(BinaryIO, self._fs.open_input_file(self._path(key)))

    async def delete(self, key: str) -> None:
        def remove() -> None:
            for path in (self._path(key), self._partial(key)):
                with contextlib.suppress(FileNotFoundError):
                    self._fs.delete_file(path)

        await asyncio.to_thread(remove)

    def scan(self) -> Iterator[StoredKey]:
        selector = pafs.FileSelector(self._prefix, recursive=True, allow_not_found=True)
        for info in self._fs.get_file_info(selector):
            if not info.is_file:
                continue
            name = info.base_name
            if not name or name.startswith("."):
                continue
            modified = info.mtime.timestamp() if info.mtime is not None else 0.0
            yield StoredKey(name, modified)
