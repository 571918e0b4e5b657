"""What a WAV upload's RIFF header says, read before FFmpeg is given the file.

FFmpeg clamps a WAV's duration to the file size, so a truncated WAV only shows in the size
its `data` chunk claims. And once `av.open` has run nothing may read or seek on the file
(see `audio.py`), so the header and the file size are taken first, here.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import BinaryIO

HEADER_PROBE_BYTES = 4096


@dataclass(frozen=True)
class WavData:
    offset: int
    size: int
    byte_rate: int

    @property
    def duration_s(self) -> float:
        return self.size / self.byte_rate


def wav_data(head: bytes) -> WavData | None:
    """Where the RIFF `data` chunk starts and how long it claims to be.

    FFmpeg clamps a WAV's duration to the file size, so truncation only shows here.
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    byte_rate = None
    pos = 12
    while pos + 8 <= len(head):
        chunk_id, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        body = pos + 8
        if chunk_id == b"fmt " and body + 12 <= len(head):
            byte_rate = struct.unpack("<I", head[body + 8 : body + 12])[0]
        elif chunk_id == b"data":
            # 0 and 0xFFFFFFFF are used by streaming writers that did not know the size.
            if not byte_rate or size in (0, 0xFFFFFFFF):
                return None
            return WavData(offset=body, size=size, byte_rate=byte_rate)
        pos = body + size + (size & 1)
    return None


def head_and_size(file: BinaryIO) -> tuple[bytes, int]:
    """The first bytes and the total size of an upload, read before FFmpeg gets the file.

    Leaves the file at position 0, where FFmpeg starts reading.
    """
    file.seek(0)
    head = file.read(HEADER_PROBE_BYTES)
    size = file.seek(0, io.SEEK_END)
    file.seek(0)
    return head, size
