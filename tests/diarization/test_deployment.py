"""The `SpeakerDiarizer` replica's class on its own: one file at a time, and a call whose
caller went away while it waited does not diarize for nobody."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs the diarization extra")

from deployments.diarizer import SpeakerDiarizer
from services.core.settings import Settings
from services.diarization.pipeline import Diarizer, Turn
from tests.diarization.conversations import conversation


class CountingDiarizer:
    """The real Diarizer, counting the files it is given and whether two ever overlap."""

    def __init__(self) -> None:
        self._real = Diarizer()
        self.calls = 0
        self.running = 0
        self.overlapped = False
        self.started = threading.Event()
        self._guard = threading.Lock()

    def diarize(self, audio: np.ndarray, **kwargs: Any) -> list[Turn]:
        with self._guard:
            self.calls += 1
            self.running += 1
            self.overlapped |= self.running > 1
        self.started.set()
        try:
            return self._real.diarize(audio, **kwargs)
        finally:
            with self._guard:
                self.running -= 1


async def test_a_call_cancelled_while_waiting_for_the_lock_does_no_work(
    settings: Settings,
) -> None:
    replica = SpeakerDiarizer.func_or_class(settings)
    counting = CountingDiarizer()
    replica._diarizer = counting
    ended = threading.Semaphore(0)  # one release per call's thread, cancelled or not
    run = replica._run

    def counted_run(*args: Any) -> Any:
        try:
            return run(*args)
        finally:
            ended.release()

    replica._run = counted_run
    audio, _ = conversation(2, gap_s=0.0, seed=2)
    first = asyncio.create_task(replica.diarize(audio))
    assert await asyncio.to_thread(counting.started.wait, 60)  # the first holds the lock
    waiting = [asyncio.create_task(replica.diarize(audio)) for _ in range(3)]
    await asyncio.sleep(0.1)
    for task in waiting:
        task.cancel()
    turns = await first
    for _ in range(4):  # the cancelled calls' threads outlive their tasks
        assert await asyncio.to_thread(ended.acquire, True, 60)
    assert all(task.cancelled() for task in waiting)
    assert {row["speaker"] for row in turns} == {"A", "B"}
    assert counting.calls == 1
    assert not counting.overlapped
