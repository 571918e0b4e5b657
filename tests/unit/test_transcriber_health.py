"""The Whisper replica's health check tells a hung model from a busy one (no Ray started)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from deployments.transcriber import WhisperTranscriber, empty_stats
from services.transcription.packing import RunStats
from services.transcription.watchdog import CallWatchdog, HungCallError


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_busy_is_healthy_and_one_long_call_is_not() -> None:
    clock = _Clock()
    watchdog = CallWatchdog(limit_s=300, clock=clock)
    watchdog.check()  # idle
    for _ in range(50):  # back-to-back calls of normal length: busy, never hung
        with watchdog.call():
            clock.now += 20
            watchdog.check()
    assert watchdog.oldest_s() is None
    with watchdog.call():
        clock.now += 299
        watchdog.check()
        clock.now += 2
        with pytest.raises(HungCallError, match="301 s"):
            watchdog.check()
    watchdog.check()  # it returned: healthy again


def test_a_failing_call_is_forgotten() -> None:
    clock = _Clock()
    watchdog = CallWatchdog(limit_s=1, clock=clock)
    with pytest.raises(ValueError, match="engine error"), watchdog.call():
        raise ValueError("engine error")
    clock.now += 10
    watchdog.check()


class _HangingEngine:
    """Stands in for the engine: `run` blocks until released, as a hung model would."""

    model_id = "stub"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.last_run = RunStats(windows=1, speech_s=1.0)

    def run(self, items: list[Any]) -> list[Any]:
        self.entered.set()
        self.release.wait(30)
        return [None for _ in items]


def test_check_health_fails_while_an_engine_call_hangs() -> None:
    cls: Any = WhisperTranscriber.func_or_class  # the class behind the Serve deployment
    replica = cls.__new__(cls)  # no Serve, no model: only what the two methods use
    clock = _Clock()
    engine = _HangingEngine()
    replica._engine = engine
    replica._ready = True
    replica._watchdog = CallWatchdog(limit_s=300, clock=clock)
    replica._stats = empty_stats()

    worker = threading.Thread(target=replica._run_engine, args=([SimpleNamespace(queued_at=0.0)],))
    worker.start()
    assert engine.entered.wait(10)
    clock.now += 60
    replica.check_health()  # a minute into a call: busy, not hung
    clock.now += 300
    with pytest.raises(HungCallError):
        replica.check_health()
    engine.release.set()
    worker.join(10)
    replica.check_health()
    assert replica._stats["batches"] == 1
