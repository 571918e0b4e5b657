"""Where uploaded audio lives until its job is done and its retention passes.

`AudioStorage` is the seam a shared or object store implements; `LocalAudioStorage` keeps
files under `<data_dir>/audio`, written to a partial file and renamed into place, hashed
(sha256) while they stream in, never held in memory. A stored file and its directory
entry are fsynced before `save` returns, so an acknowledged upload survives a power loss.

A full disk (ENOSPC, EDQUOT) is an expected failure: `InsufficientStorageError` (507),
with the partial file removed. `DiskGuard` refuses uploads before they are read when the
disks they will land on lack the room (keeping a reserve for everything else).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from services.core.errors import InsufficientStorageError

_COPY_CHUNK_BYTES = 1024 * 1024
_PARTIAL_SUFFIX = ".part"
OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class StoredAudio:
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class StoredKey:
    key: str
    modified_at: float
    """Last modification, in seconds since the epoch."""


class AudioStorage(Protocol):
    async def save(self, source: BinaryIO) -> StoredAudio: ...

    def open(self, key: str) -> BinaryIO: ...

    async def delete(self, key: str) -> None: ...

    def scan(self) -> Iterator[StoredKey]:
        """Every key held, stored or partially written, with its modification time.

        Lazy and blocking (call it from a thread); the sweeper compares it with the job
        rows to find audio no job refers to."""
        ...


def is_out_of_space(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception it was raised from, is a full disk or quota."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in OUT_OF_SPACE_ERRNOS:
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def out_of_space_error() -> InsufficientStorageError:
    return InsufficientStorageError(
        "The server has no disk space left to store this upload; retry later.",
        param="file",
    )


def _fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a rename, a new file or subdirectory) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalAudioStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root / key[:2] / key

    def _partial(self, key: str) -> Path:
        return self.root / key[:2] / f".{key}{_PARTIAL_SUFFIX}"

    async def save(self, source: BinaryIO) -> StoredAudio:
        return await asyncio.to_thread(self._save, source)

    def _save(self, source: BinaryIO) -> StoredAudio:
        key = uuid.uuid4().hex
        path, partial = self._path(key), self._partial(key)
        digest = hashlib.sha256()
        size = 0
        try:
            self._make_dirs(path.parent)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(_COPY_CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, path)
            _fsync_dir(path.parent)
        except BaseException as exc:
            partial.unlink(missing_ok=True)
            path.unlink(missing_ok=True)  # renamed but not durable: not acknowledged either
            if is_out_of_space(exc):
                raise out_of_space_error() from exc
            raise
        return StoredAudio(key=key, size=size, sha256=digest.hexdigest())

    @staticmethod
    def _make_dirs(directory: Path) -> None:
        missing: list[Path] = []
        probe = directory
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        directory.mkdir(parents=True, exist_ok=True)
        for created in reversed(missing):  # each new entry must be durable in its parent
            _fsync_dir(created.parent)

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    async def delete(self, key: str) -> None:
        def unlink() -> None:
            self._path(key).unlink(missing_ok=True)
            self._partial(key).unlink(missing_ok=True)

        await asyncio.to_thread(unlink)

    def scan(self) -> Iterator[StoredKey]:
        if not self.root.is_dir():
            return
        with os.scandir(self.root) as shards:
            for shard in shards:
                if not shard.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(shard.path) as entries:
                    for entry in entries:
                        key = _key_of(entry.name)
                        if key is None or not entry.is_file(follow_symlinks=False):
                            continue
                        with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                            yield StoredKey(key, entry.stat(follow_symlinks=False).st_mtime)


def _key_of(name: str) -> str | None:
    """The key a file in the store belongs to, or None for anything else."""
    if name.startswith(".") and name.endswith(_PARTIAL_SUFFIX):
        name = name[1 : -len(_PARTIAL_SUFFIX)]
    if not name or name.startswith(".") or "/" in name:
        return None
    return name


@dataclass(frozen=True)
class DiskSpace:
    device: int
    free_bytes: int
    total_bytes: int


def disk_space(directory: Path) -> DiskSpace:
    """Free and total bytes of the filesystem `directory` is (or will be) on."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    stats = os.statvfs(probe)
    return DiskSpace(
        device=os.stat(probe).st_dev,
        free_bytes=stats.f_bavail * stats.f_frsize,
        total_bytes=stats.f_blocks * stats.f_frsize,
    )


class DiskGuard:
    """Refuses uploads the disks cannot take while keeping a reserve free.

    The reserve is the smaller of `reserve_bytes` and `reserve_fraction` of the disk. An
    upload needs its size once on every directory it lands in (the multipart spool, then
    the audio store); two directories on one filesystem need it twice. Bytes promised to
    uploads still in flight in this process count as used, so concurrent uploads cannot
    each pass the check for the same free space.
    """

    def __init__(self, *, reserve_bytes: int, reserve_fraction: float) -> None:
        self._reserve_bytes = reserve_bytes
        self._reserve_fraction = reserve_fraction
        self._promised: dict[int, int] = {}
        self._lock = threading.Lock()

    def reserve_of(self, space: DiskSpace) -> int:
        return min(self._reserve_bytes, int(self._reserve_fraction * space.total_bytes))

    def _needs(self, size: int, directories: list[Path]) -> dict[int, tuple[DiskSpace, int]]:
        needs: dict[int, tuple[DiskSpace, int]] = {}
        for directory in directories:
            space = disk_space(directory)
            _, needed = needs.get(space.device, (space, 0))
            needs[space.device] = (space, needed + size)
        return needs

    def admit(self, size: int, directories: list[Path]) -> Reservation:
        """Hold room for an upload of `size` bytes; `InsufficientStorageError` if none."""
        needs = self._needs(size, directories)
        with self._lock:
            for device, (space, needed) in needs.items():
                available = space.free_bytes - self._promised.get(device, 0)
                if available - needed < self.reserve_of(space):
                    raise InsufficientStorageError(
                        f"The upload has {size} bytes and the server cannot store it while "
                        "keeping its disk reserve free; retry later.",
                        param="file",
                    )
            promised = {device: needed for device, (_, needed) in needs.items()}
            for device, needed in promised.items():
                self._promised[device] = self._promised.get(device, 0) + needed
        return Reservation(self, promised)

    def _release(self, promised: dict[int, int]) -> None:
        with self._lock:
            for device, needed in promised.items():
                self._promised[device] -= needed

    def check_room(self, directory: Path, size: int, *, keep_free: int | None = None) -> None:
        """Refuse writing `size` more bytes to `directory` if that left less than
        `keep_free` (default: the reserve) free on its disk."""
        space = disk_space(directory)
        floor = self.reserve_of(space) if keep_free is None else keep_free
        if space.free_bytes - size < floor:
            raise out_of_space_error()


class Reservation:
    def __init__(self, guard: DiskGuard, promised: dict[int, int]) -> None:
        self._guard = guard
        self._promised: dict[int, int] | None = promised

    def release(self) -> None:
        if self._promised is not None:
            self._guard._release(self._promised)
            self._promised = None
