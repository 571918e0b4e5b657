"""Tells a hung model from a busy one, for the Whisper replica's health check.

A busy replica runs engine calls back to back, each taking its expected time; a hung one
is stuck inside a single call. So the watchdog records when each call started and
`check()` fails only when one call has run longer than `limit_s`, however full the queue is.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class HungCallError(RuntimeError):
    """An engine call has run far past its expected time."""


class CallWatchdog:
    def __init__(self, limit_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit_s = limit_s
        self._clock = clock
        self._started: dict[int, float] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()  # calls run on worker threads, checks on the loop

    @contextmanager
    def call(self) -> Iterator[None]:
        """Wrap one engine call: its start is recorded until it returns or raises."""
        with self._lock:
            call_id = next(self._ids)
            self._started[call_id] = self._clock()
        try:
            yield
        finally:
            with self._lock:
                del self._started[call_id]

    def oldest_s(self) -> float | None:
        """How long the longest-running current call has run; None when idle."""
        with self._lock:
            started = min(self._started.values(), default=None)
        return None if started is None else self._clock() - started

    def check(self) -> None:
        running_s = self.oldest_s()
        if running_s is not None and running_s > self.limit_s:
            raise HungCallError(
                f"an engine call has run for {running_s:.0f} s, past the {self.limit_s:g} s "
                "limit (whisper.hung_call_s): the model looks hung"
            )
