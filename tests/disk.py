"""Small real filesystems for out-of-space tests: a tmpfs of a few MB, filled on purpose.

Mounting needs root (the CI container runs as root); elsewhere these tests skip, saying so.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

MIB = 1024 * 1024


@contextlib.contextmanager
def tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
        check=True,
        capture_output=True,
        timeout=10,
    )
    try:
        yield path
    finally:
        unmounted = subprocess.run(["umount", str(path)], capture_output=True, timeout=10)
        if unmounted.returncode != 0:  # something still holds a file open: detach lazily
            subprocess.run(["umount", "-l", str(path)], check=True, timeout=10)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(path: Path, leave_bytes: int, name: str = "filler") -> Path:
    """Write a file on `path`'s filesystem so that about `leave_bytes` stay free."""
    filler = path / name
    with filler.open("ab") as out:
        out.write(b"\0" * max(free_bytes(path) - leave_bytes, 0))
    return filler


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())
