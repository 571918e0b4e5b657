"""A job tracker in a process of its own, so that its memory can be measured honestly.

Run as `python -m tests.jobs.tracker_process '<json>'` with the test's data directory, job
settings and a Unix socket: the model stays in the test process (as it stays in the Whisper
replica in production) and is reached through the socket, behind the `Transcriber`
protocol. The tracker runs on the (SQLite) database until the given job is finished,
sampling its own RSS every 20 ms, and prints one JSON line: baseline and peak RSS in MB.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import struct
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from services.resources import build_resources
from services.transcription.domain import (
    DecodeOptions,
    Task,
    Transcript,
    TranscriptionOptions,
    Waveform,
    transcript_from_dict,
    transcript_to_dict,
)
from tests.jobs.conftest import make_settings

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


async def _send(writer: asyncio.StreamWriter, header: dict[str, Any], body: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    writer.write(struct.pack("<II", len(raw), len(body)) + raw + body)
    await writer.drain()


async def _receive(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    sizes = await reader.readexactly(8)
    header_len, body_len = struct.unpack("<II", sizes)
    header = json.loads(await reader.readexactly(header_len))
    return header, await reader.readexactly(body_len)


class SocketTranscriber:
    """The tracker's side: a `Transcriber` whose model is in another process."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = asyncio.Lock()

    async def transcribe(
        self, audio: Waveform, options: TranscriptionOptions, *, background: bool = False
    ) -> Transcript:
        async with self._lock:
            reader, writer = await asyncio.open_unix_connection(self._path)
            try:
                await _send(writer, asdict(options), audio.tobytes())
                header, _ = await _receive(reader)
            finally:
                writer.close()
        return transcript_from_dict(header)

    async def ready(self) -> bool:
        return True


async def serve_model(path: str, transcriber: Any) -> asyncio.Server:
    """The test's side: run the real model for the tracker process."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header, body = await _receive(reader)
        decode = header["decode"]
        options = TranscriptionOptions(
            DecodeOptions(Task(decode["task"]), decode["language"], decode["prompt"],
                          decode["temperature"]),
            header["word_timestamps"],
        )  # fmt: skip
        audio = np.frombuffer(body, dtype=np.float32)
        transcript = await transcriber.transcribe(audio, options, background=True)
        await _send(writer, transcript_to_dict(transcript))
        writer.close()

    return await asyncio.start_unix_server(handle, path)


async def main(args: dict[str, Any]) -> dict[str, float]:
    settings = make_settings(Path(args["data_dir"]), "sqlite", "", "", **args["jobs"])
    runtime = build_resources(settings, nudge=lambda: None)
    runner = runtime.runner("memory-tracker", SocketTranscriber(args["socket"]))
    from services.transcription.engine import speech_spans

    speech_spans(np.zeros(16000, dtype=np.float32))  # load the VAD (tracker start-up)
    baseline, peak = rss_mb(), [rss_mb()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    await runner.start()
    loop = asyncio.create_task(runner.run_forever(asyncio.Event()))
    job_id = str(args["job_id"])
    while (await runtime.jobs.get_fresh(job_id)).status in ("queued", "running"):  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    loop.cancel()
    stop.set()
    sampler.join()
    await runtime.close()
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "baseline_mb": baseline,
        "peak_mb": peak[0],
        "growth_mb": peak[0] - baseline,
        "maxrss_growth_mb": maxrss_after - maxrss_before,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
