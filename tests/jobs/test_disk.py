"""Full disks answer 507 and leave nothing behind; audio is durable before the 202.

The disks are real: small tmpfs mounts for the audio store (`<data_dir>/audio`) and for the
multipart parser's spool (`tempfile.gettempdir()`), filled on purpose before or while an
upload streams in. Every test runs on PostgreSQL + Redis and on SQLite.
"""

from __future__ import annotations

import io
import os
import tempfile
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from services.core.storage import DiskGuard
from tests.conftest import DISTINCT
from tests.disk import MIB, files_under, fill, free_bytes, tmpfs
from tests.jobs.conftest import JobsEnv

Factory = Callable[..., Any]
BOUNDARY = "rayscribe-test-boundary"
# A reserve smaller than the mounts, so that both refusing and accepting can be shown.
SMALL_RESERVE = {"disk_reserve_bytes": MIB, "disk_reserve_fraction": 1.0}


def _wav(size_bytes: int) -> bytes:
    """A valid 16 kHz mono 16-bit WAV of about `size_bytes` (quiet noise)."""
    samples = np.random.default_rng(3).normal(0, 300, size_bytes // 2).astype(np.int16)
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(16_000)
        writer.writeframes(samples.tobytes())
    return out.getvalue()


def _multipart(audio: bytes) -> tuple[bytes, bytes]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    return head + audio, f"\r\n--{BOUNDARY}--\r\n".encode()


async def _post_streaming(
    env: JobsEnv, audio: bytes, *, after_bytes: int, then: Callable[[], object], declared: bool
) -> Any:
    """POST /v1/jobs, streaming the body in 64 kB pieces; `then()` runs mid-upload."""
    body, tail = _multipart(audio)
    piece = 64 * 1024

    async def stream() -> AsyncIterator[bytes]:
        for offset in range(0, len(body), piece):
            if offset == after_bytes:
                then()
            yield body[offset : offset + piece]
        yield tail

    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    if declared:
        headers["content-length"] = str(len(body) + len(tail))
    return await env.client.post("/v1/jobs", content=stream(), headers=headers)


def _is_507(response: Any) -> None:
    assert response.status_code == 507, response.text
    assert response.json() == {
        "error": {
            "message": response.json()["error"]["message"],
            "type": "server_error",
            "param": "file",
            "code": "insufficient_storage",
        }
    }


async def _nothing_stored(env: JobsEnv) -> None:
    assert (await env.sql("SELECT count(*) FROM jobs"))[0][0] == 0
    assert files_under(env.settings.audio_dir) == []


@pytest.fixture
def audio_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB filesystem where the jobs environment keeps its audio."""
    with tmpfs(tmp_path / "audio", 8 * MIB) as disk:
        yield disk


@pytest.fixture
def spool_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An 8 MB filesystem the multipart parser spools uploads into."""
    with tmpfs(tmp_path / "spool", 8 * MIB) as disk:
        monkeypatch.setattr(tempfile, "tempdir", str(disk))
        yield disk


async def test_an_upload_larger_than_the_free_space_is_refused_before_it_is_read(
    audio_disk: Path, env_factory: Factory
) -> None:
    env: JobsEnv = await env_factory(start=False, **SMALL_RESERVE)
    with DISTINCT[0].path.open("rb") as f:
        small = await env.client.post(
            "/v1/jobs", files={"file": ("a.flac", f.read())}, data={"model": "whisper-1"}
        )
    assert small.status_code == 202  # a small upload still fits beside the reserve
    stored = files_under(env.settings.audio_dir)
    big = _wav(7 * MIB)  # fits the 8 MB disk, but not beside the 1 MB reserve
    refused = await env.client.post(
        "/v1/jobs", files={"file": ("big.wav", big)}, data={"model": "whisper-1"}
    )
    _is_507(refused)
    assert (await env.sql("SELECT count(*) FROM jobs"))[0][0] == 1
    assert files_under(env.settings.audio_dir) == stored


async def test_disk_filled_while_the_parser_spools_gives_507_and_no_spool_file(
    spool_disk: Path, env_factory: Factory
) -> None:
    env: JobsEnv = await env_factory(start=False, **SMALL_RESERVE)
    baseline = free_bytes(spool_disk)
    filler: list[Path] = []
    response = await _post_streaming(
        env,
        _wav(3 * MIB),
        after_bytes=1024 * 1024,  # admitted by Content-Length; the disk fills afterwards
        then=lambda: filler.append(fill(spool_disk, leave_bytes=512 * 1024)),
        declared=True,
    )
    _is_507(response)
    await _nothing_stored(env)
    filler[0].unlink()
    assert files_under(spool_disk) == []
    assert free_bytes(spool_disk) == baseline  # the spooled part was released


async def test_a_real_enospc_while_spooling_also_gives_507(
    spool_disk: Path, env_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write itself fails (the per-chunk check is switched off to let it happen)."""
    monkeypatch.setattr(DiskGuard, "check_room", lambda *args, **kwargs: None)
    env: JobsEnv = await env_factory(start=False, **SMALL_RESERVE)
    baseline = free_bytes(spool_disk)
    filler: list[Path] = []
    response = await _post_streaming(
        env,
        _wav(3 * MIB),
        after_bytes=512 * 1024,
        then=lambda: filler.append(fill(spool_disk, leave_bytes=256 * 1024)),
        declared=True,
    )
    _is_507(response)
    await _nothing_stored(env)
    filler[0].unlink()
    assert free_bytes(spool_disk) == baseline


async def test_an_upload_without_length_is_cut_off_at_the_reserve(
    spool_disk: Path, env_factory: Factory
) -> None:
    env: JobsEnv = await env_factory(start=False, **SMALL_RESERVE)
    fill(spool_disk, leave_bytes=3 * MIB)
    response = await _post_streaming(
        env, _wav(4 * MIB), after_bytes=-1, then=lambda: None, declared=False
    )
    _is_507(response)
    await _nothing_stored(env)
    assert [p.name for p in files_under(spool_disk)] == ["filler"]


async def test_disk_filled_before_the_audio_is_stored_gives_507_and_no_partial_file(
    audio_disk: Path, env_factory: Factory
) -> None:
    env: JobsEnv = await env_factory(start=False, **SMALL_RESERVE)
    env.settings.audio_dir.mkdir(exist_ok=True)
    filler: list[Path] = []
    response = await _post_streaming(
        env,
        _wav(3 * MIB),
        after_bytes=1024 * 1024,
        then=lambda: filler.append(fill(audio_disk, leave_bytes=MIB)),
        declared=True,
    )
    _is_507(response)
    assert (await env.sql("SELECT count(*) FROM jobs"))[0][0] == 0
    assert [p.name for p in files_under(audio_disk)] == ["filler"]  # no partial audio
    filler[0].unlink()
    stored = await env.submit(DISTINCT[1].path)  # room again: accepted
    assert stored.status_code == 202, stored.text


async def test_audio_and_its_directory_are_fsynced_before_the_row_commits(
    env_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    env: JobsEnv = await env_factory(start=False)
    events: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        events.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}")
        real_fsync(fd)

    def committed(session: Session) -> None:
        events.append("commit")

    monkeypatch.setattr(os, "fsync", fsync)
    event.listen(Session, "after_commit", committed)
    try:
        response = await env.submit(DISTINCT[0].path)
    finally:
        event.remove(Session, "after_commit", committed)
    assert response.status_code == 202
    key = (await env.sql("SELECT audio_key FROM jobs"))[0][0]
    shard = env.settings.audio_dir / key[:2]
    file_synced = events.index(f"fsync {shard / f'.{key}.part'}")
    dir_synced = events.index(f"fsync {shard}")
    assert file_synced < dir_synced < events.index("commit"), events
