"""Free space and the upload reserve of the disks uploads land on, for the disk alert."""

from __future__ import annotations

import tempfile
from pathlib import Path

from services.core.metrics import Telemetry, telemetry
from services.core.settings import Settings
from services.core.storage import DiskGuard, disk_space


class DiskSampler:
    """Samples the spool (`tempfile.gettempdir()`, where uploads are spooled) and the local
    audio store, with the reserve `DiskGuard` keeps on each."""

    def __init__(
        self, settings: Settings, audio_root: Path | None, recorder: Telemetry = telemetry
    ) -> None:
        self._guard = DiskGuard(
            reserve_bytes=settings.jobs.disk_reserve_bytes,
            reserve_fraction=settings.jobs.disk_reserve_fraction,
        )
        self._volumes = {"spool": Path(tempfile.gettempdir())}
        if audio_root is not None:
            self._volumes["audio"] = audio_root
        self._telemetry = recorder

    def __call__(self) -> None:
        for volume, directory in self._volumes.items():
            space = disk_space(directory)
            self._telemetry.disk(volume, space.free_bytes, self._guard.reserve_of(space))
