"""Event-stream accounting and pacing for one ingress replica (pure Python, no HTTP).

`StreamLimiter` counts open event streams per job, per client and in total, and refuses a
new one past a cap with 429. `paced` wraps a job's status changes with keep-alive ticks and
ends them after a maximum lifetime, without ever cancelling the source between items (a
cancelled async generator is finished for good).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.core.errors import TooManyRequestsError

T = TypeVar("T")

STREAM_RETRY_AFTER_S = 5
"""What a refused client is told to wait: streams last long, so a short wait rarely helps."""

MAX_CLIENT_KEY_CHARS = 256
"""A longer client key (from a header) is cut, so a hostile header cannot grow the table."""


@dataclass(frozen=True)
class StreamCaps:
    total: int
    per_job: int
    per_client: int | None = None


class StreamSlot:
    """One open stream's place in the counts; `release` is idempotent and never awaits,
    so it completes even while the task that holds it is being cancelled."""

    def __init__(self, limiter: StreamLimiter, job_id: str, client: str | None) -> None:
        self._limiter = limiter
        self.job_id = job_id
        self.client = client
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._release(self)


class StreamLimiter:
    """Open event streams of one replica; every method runs on its event loop (no locks)."""

    def __init__(self, caps: StreamCaps) -> None:
        self.caps = caps
        self._total = 0
        self._per_job: Counter[str] = Counter()
        self._per_client: Counter[str] = Counter()

    @property
    def open_streams(self) -> int:
        return self._total

    def streams_of(self, job_id: str) -> int:
        return self._per_job[job_id]

    def acquire(self, job_id: str, client: str | None = None) -> StreamSlot:
        """A slot for one more stream on `job_id`, or `TooManyRequestsError` past a cap.

        `client` counts only when a per-client cap is configured (a trusted proxy names
        the client); without it the per-client cap would key on the proxy's own address.
        """
        caps = self.caps
        if self._total >= caps.total:
            raise _refused(f"This server already holds {caps.total} open event streams.")
        if self._per_job[job_id] >= caps.per_job:
            raise _refused(f"Job {job_id} already has {caps.per_job} open event streams.")
        key = client[:MAX_CLIENT_KEY_CHARS] if client and caps.per_client else None
        if key is not None and caps.per_client is not None:
            if self._per_client[key] >= caps.per_client:
                raise _refused(f"This client already has {caps.per_client} open event streams.")
            self._per_client[key] += 1
        self._total += 1
        self._per_job[job_id] += 1
        return StreamSlot(self, job_id, key)

    def _release(self, slot: StreamSlot) -> None:
        self._total -= 1
        _decrement(self._per_job, slot.job_id)
        if slot.client is not None:
            _decrement(self._per_client, slot.client)


def _decrement(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]  # finished jobs and gone clients leave no entry behind


def _refused(message: str) -> TooManyRequestsError:
    return TooManyRequestsError(
        f"{message} Close one, or retry after {STREAM_RETRY_AFTER_S} s.",
        code="too_many_streams",
        retry_after_s=STREAM_RETRY_AFTER_S,
    )


class KeepAlive:
    """Nothing happened for a keep-alive interval."""


class Expired:
    """The stream reached its maximum lifetime; the client should reconnect."""


@dataclass(frozen=True)
class Item(Generic[T]):
    value: T


async def paced(
    source: AsyncIterator[T],
    *,
    keepalive_s: float,
    lifetime_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Item[T] | KeepAlive | Expired]:
    """The source's items, a `KeepAlive` after every quiet `keepalive_s`, and an `Expired`
    (then the end) once `lifetime_s` has passed. Closing this closes the source."""
    deadline = clock() + lifetime_s
    pending: asyncio.Task[T] | None = None
    try:
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                yield Expired()
                return
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=min(keepalive_s, remaining))
            if not done:
                if deadline - clock() > 0:
                    yield KeepAlive()
                continue
            task, pending = pending, None
            try:
                value = task.result()
            except StopAsyncIteration:
                return
            yield Item(value)
    finally:
        if pending is not None:
            pending.cancel()
            # The stream is closing; nobody is left to read the source's error.
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                await pending
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
