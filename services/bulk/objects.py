"""Local paths and `s3://` URLs behind one interface: pyarrow's filesystems.

pyarrow is already what Ray Data and Parquet use, and its `S3FileSystem` speaks to any
S3-compatible endpoint (AWS, MinIO, Ceph...), takes credentials from the standard AWS_*
environment variables, and completes a multipart upload only when the stream is closed
without error, so a killed writer leaves no object behind. The endpoint and region come
from `StorageSettings`; nothing here knows which server answers.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

from services.core.s3_storage import s3_filesystem
from services.core.settings import StorageSettings

S3_SCHEME = "s3://"


def is_s3(location: str) -> bool:
    return location.startswith(S3_SCHEME)


@dataclass(frozen=True)
class Location:
    """A file or directory: the filesystem that holds it and its path there."""

    fs: pafs.FileSystem
    path: str
    """The filesystem's own path: `bucket/key` on S3, an absolute path locally."""
    url: str
    """How users name it: `s3://bucket/key` or the absolute local path."""

    @property
    def remote(self) -> bool:
        return isinstance(self.fs, pafs.S3FileSystem)

    def child(self, name: str) -> Location:
        path = f"{self.path.rstrip('/')}/{name}"
        url = f"{self.url.rstrip('/')}/{name}"
        return Location(self.fs, path, url)


def resolve(location: str, storage: StorageSettings) -> Location:
    """The filesystem and path for a local path or an `s3://bucket/key` URL."""
    if is_s3(location):
        path = location[len(S3_SCHEME) :].strip("/")
        if not path:
            raise ValueError(f"{location!r} names no bucket; expected s3://bucket/prefix")
        fs = s3_filesystem(storage)
        return Location(fs, path, S3_SCHEME + path)
    absolute = os.path.abspath(os.path.expanduser(location))
    return Location(pafs.LocalFileSystem(), absolute, absolute)


def read_bytes(location: Location, *, max_bytes: int) -> bytes:
    """The whole file; `FileTooLargeError` past `max_bytes` (checked before reading)."""
    info = location.fs.get_file_info(location.path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(location.url)
    if info.type != pafs.FileType.File:
        raise IsADirectoryError(location.url)
    if info.size is not None and info.size > max_bytes:
        raise FileTooLargeError(info.size, max_bytes)
    with location.fs.open_input_stream(location.path) as stream:
        data: bytes = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLargeError(len(data), max_bytes)
    return data


class FileTooLargeError(Exception):
    def __init__(self, size: int, max_bytes: int) -> None:
        super().__init__(f"the file has {size} bytes, more than the {max_bytes} allowed")


def write_atomically(location: Location, data: bytes) -> None:
    """Write a whole file so that readers see all of it or nothing.

    Locally: a hidden temp file in the same directory, fsynced, then renamed. On S3 one
    object upload, which becomes visible only when it completes; the bytes are built in
    memory first, so an error cannot close the stream over half a file."""
    if location.remote:
        with location.fs.open_output_stream(location.path) as out:
            out.write(data)
        return
    directory, name = os.path.split(location.path)
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, location.path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_files(location: Location) -> list[pafs.FileInfo]:
    """Every file under a directory or prefix (recursively); [] when there is none."""
    selector = pafs.FileSelector(location.path, recursive=True, allow_not_found=True)
    return [info for info in location.fs.get_file_info(selector) if info.is_file]
