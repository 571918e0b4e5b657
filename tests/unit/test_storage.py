"""LocalAudioStorage (durability, full disks, listing) and the disk-space guard, on real
filesystems: the test's temp dir and small tmpfs mounts."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployments.storage_guard import StorageGuardMiddleware
from services.core.errors import InsufficientStorageError
from services.core.settings import Settings
from services.core.storage import (
    DiskGuard,
    LocalAudioStorage,
    StoredKey,
    disk_space,
    is_out_of_space,
)
from tests.disk import MIB, free_bytes, tmpfs


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", 4 * MIB) as disk:
        yield disk


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


async def test_save_fsyncs_the_file_then_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalAudioStorage(tmp_path / "audio")
    calls = _record_fsyncs(monkeypatch)
    stored = await storage.save(io.BytesIO(b"RIFF" * 1000))
    shard = storage.root / stored.key[:2]
    # The directories created for it (each in its parent), then the file under its partial
    # name, then the directory that holds it under its final name.
    assert set(calls[:-2]) == {str(tmp_path), str(storage.root)}
    assert calls[-2:] == [str(shard / f".{stored.key}.part"), str(shard)]
    calls.clear()
    second = await storage.save(io.BytesIO(b"x"))
    second_shard = storage.root / second.key[:2]
    assert calls[-2:] == [str(second_shard / f".{second.key}.part"), str(second_shard)]
    assert (shard / stored.key).read_bytes() == b"RIFF" * 1000


async def test_a_full_disk_is_a_507_error_and_leaves_no_partial_file(small_disk: Path) -> None:
    storage = LocalAudioStorage(small_disk / "audio")
    baseline = free_bytes(small_disk)
    with pytest.raises(InsufficientStorageError) as raised:
        await storage.save(io.BytesIO(b"\1" * (6 * MIB)))
    assert raised.value.status_code == 507
    assert raised.value.code == "insufficient_storage"
    assert is_out_of_space(raised.value)
    assert [p for p in storage.root.rglob("*") if p.is_file()] == []
    assert free_bytes(small_disk) >= baseline - 64 * 1024  # only the shard directory remains
    assert (await storage.save(io.BytesIO(b"fits"))).size == 4  # and it still works


async def test_scan_lists_stored_and_partial_keys_with_their_age(tmp_path: Path) -> None:
    storage = LocalAudioStorage(tmp_path / "audio")
    assert list(storage.scan()) == []  # no directory yet
    stored = await storage.save(io.BytesIO(b"abc"))
    partial = storage.root / "ff" / ".ff00.part"
    partial.parent.mkdir()
    partial.write_bytes(b"half")
    os.utime(partial, (time.time() - 7200, time.time() - 7200))
    (storage.root / "ff" / ".hidden").write_bytes(b"")  # not a key
    (storage.root / "stray-file").write_bytes(b"")  # not in a shard
    found = {item.key: item for item in storage.scan()}
    assert set(found) == {stored.key, "ff00"}
    assert isinstance(found["ff00"], StoredKey)
    assert found["ff00"].modified_at < time.time() - 7000
    await storage.delete("ff00")  # deleting a key removes its partial file too
    assert not partial.exists()
    await storage.delete(stored.key)
    await storage.delete(stored.key)  # idempotent
    assert {item.key for item in storage.scan()} == set()
    with pytest.raises(ValueError, match="invalid storage key"):
        await storage.delete("../etc")


def test_guard_counts_the_reserve_both_copies_and_uploads_in_flight(small_disk: Path) -> None:
    spool, store = small_disk / "spool", small_disk / "store"
    guard = DiskGuard(reserve_bytes=MIB, reserve_fraction=1.0)
    free = free_bytes(small_disk)
    guard.admit(free - MIB - 4096, [spool]).release()  # fits, keeping the reserve
    with pytest.raises(InsufficientStorageError):
        guard.admit(free - MIB + 4096, [spool])  # would eat into the reserve
    with pytest.raises(InsufficientStorageError):  # same disk twice: needs twice the room
        guard.admit(free // 2, [spool, store])
    first = guard.admit(MIB, [spool])
    with pytest.raises(InsufficientStorageError):  # the first upload's bytes are promised
        guard.admit(free - MIB - MIB // 2, [spool])
    first.release()
    first.release()  # releasing twice gives back nothing more
    guard.admit(free - MIB - MIB // 2, [spool]).release()
    small = DiskGuard(reserve_bytes=10**15, reserve_fraction=0.5)  # the smaller reserve wins
    assert small.reserve_of(disk_space(spool)) == 2 * MIB


async def _call(app: Any, scope: dict[str, Any], body: bytes | None) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        assert body is not None, "the body was read"
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = sent[0]["status"]
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return status, json.loads(payload) if payload.startswith(b"{") else {}


def _scope(path: str, length: str | None, method: str = "POST") -> dict[str, Any]:
    headers = [(b"content-type", b"multipart/form-data; boundary=x")]
    if length is not None:
        headers.append((b"content-length", length.encode()))
    return {"type": "http", "method": method, "path": path, "headers": headers}


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 202, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def test_guard_refuses_from_content_length_before_reading_the_body(tmp_path: Path) -> None:
    # A reserve of the whole disk: nothing fits, whatever this machine's free space is.
    full = Settings(
        _env_file=None,
        data_dir=tmp_path,
        jobs={"disk_reserve_bytes": 10**18, "disk_reserve_fraction": 1.0},
    )
    guarded = StorageGuardMiddleware(_ok_app, settings=full)
    for path in ("/v1/jobs", "/v1/jobs/", "/v1/audio/transcriptions", "/v1/audio/translations"):
        status, body = await _call(guarded, _scope(path, "1000"), body=None)
        assert status == 507
        assert body["error"]["code"] == "insufficient_storage"
        assert body["error"]["type"] == "server_error"
        assert body["error"]["param"] == "file"
    # Not an upload, or no usable length: nothing to check up front.
    assert (await _call(guarded, _scope("/v1/jobs", "1000", "GET"), b""))[0] == 202
    assert (await _call(guarded, _scope("/healthz", "1000"), b""))[0] == 202
    roomy = Settings(_env_file=None, data_dir=tmp_path, jobs={"disk_reserve_bytes": 0})
    ok = StorageGuardMiddleware(_ok_app, settings=roomy)
    for length in ("1000", "abc", "-5", None):
        assert (await _call(ok, _scope("/v1/jobs", length), b"x"))[0] == 202
