"""Run the model on full batches: merge what queued up, and wait briefly for company.

Serve's `@serve.batch` forms the next batch as soon as the previous one *starts*, not when
it ends: while the model decodes for a few seconds, arrivals are cut into many small
batches that then run one after another (measured: 16 concurrent requests ran as 11
batches). The coalescer fixes that at execution time. Every batch appends its items to one
queue and waits for the engine; whoever gets the engine runs everything queued, up to the
window budget, and hands each waiting batch its results. Items of callers that went away
are dropped before they run.

It also waits briefly for company before starting a batch, at most `max_wait_s`:
- while requests that announced themselves (they are running VAD) have not queued yet;
- under load (the previous batch served several requests and just ended) until the
  first new request arrives, then while arrivals keep coming, i.e. until none came for
  `quiet_s`. Under closed-loop load, replies leave together and the next requests trickle
  back over a few hundred milliseconds; without this, the first of them would run alone
  in a nearly empty window (measured: one batch in two held a single request).
A lone client never waits: its previous batch served one request.

The window budget and both waits come from the Whisper deployment's batching config
(`deployments/transcriber.py`), which sets them live on reconfigure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from services.transcription.packing import ItemResult, WorkItem, count_windows

LOAD_MEMORY_S = 1.0
"""How long after a multi-request batch the coalescer still assumes load."""


class AbandonedError(Exception):
    """The caller of this item went away before it ran."""


@dataclass
class _Entry:
    items: list[WorkItem]
    future: asyncio.Future[list[ItemResult]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class BatchCoalescer:
    def __init__(
        self,
        run: Callable[[list[WorkItem]], list[ItemResult]],
        *,
        max_windows: int,
        max_wait_s: float,
        quiet_s: float,
    ) -> None:
        """The three limits are the deployment's batching config (`max_batch_windows`,
        `coalesce_max_wait_s`, `coalesce_quiet_s`); it may change them between batches."""
        self._run = run
        self.max_windows = max_windows
        self.max_wait_s = max_wait_s
        self.quiet_s = quiet_s
        self._pending: list[_Entry] = []
        self._engine = asyncio.Lock()
        self._on_the_way: set[int] = set()
        self._arrival = asyncio.Event()
        self._last_arrival = float("-inf")
        self._last_batch_requests = 0
        self._last_batch_end = float("-inf")
        self._next_key = 0

    def announce(self) -> int:
        """A request has started preparing; returns the key its items will carry."""
        self._next_key += 1
        self._on_the_way.add(self._next_key)
        self._arrived()
        return self._next_key

    def settle(self, key: int) -> None:
        """The request will send nothing more (all queued, none at all, or it failed)."""
        self._on_the_way.discard(key)
        self._arrival.set()

    async def submit(self, items: list[WorkItem]) -> list[ItemResult]:
        """Results for `items`, in order; runs them together with whatever else is queued."""
        entry = _Entry(list(items))
        self._pending.append(entry)
        for item in items:
            if item.last_of_request:
                self._on_the_way.discard(item.request_key)
        self._arrived()
        async with self._engine:
            while not entry.future.done():
                await self._wait_for_company()
                await self._run_next_chunk()
        return entry.future.result()

    def _arrived(self) -> None:
        self._last_arrival = asyncio.get_running_loop().time()
        self._arrival.set()

    async def _wait_for_company(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        under_load = (
            self._last_batch_requests > 1 and loop.time() - self._last_batch_end < LOAD_MEMORY_S
        )
        while self._queued_windows() < self.max_windows:
            now = loop.time()
            if self._on_the_way:
                until = deadline
            elif under_load and self._last_arrival < self._last_batch_end:
                until = deadline  # replies just left: the next requests are on their way
            elif under_load and now - self._last_arrival < self.quiet_s:
                until = min(deadline, self._last_arrival + self.quiet_s)
            else:
                return
            if until <= now:
                return
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), until - now)
            except TimeoutError:
                if until >= deadline:
                    return

    def _queued_windows(self) -> int:
        return count_windows([i for e in self._pending for i in e.items if not i.abandoned])

    def _take_chunk(self) -> list[_Entry]:
        """Entries that fit the window budget (at least one, which may exceed it alone: a
        job's chunk runs whole): interactive work first, then background work
        (asynchronous jobs), each in arrival order."""
        self._pending.sort(key=lambda entry: all(item.background for item in entry.items))
        chunk: list[_Entry] = []
        items: list[WorkItem] = []
        while self._pending:
            live = [item for item in self._pending[0].items if not item.abandoned]
            if chunk and count_windows(items + live) > self.max_windows:
                break
            chunk.append(self._pending.pop(0))
            items += live
        return chunk

    async def _run_next_chunk(self) -> None:
        chunk = self._take_chunk()
        live = [item for entry in chunk for item in entry.items if not item.abandoned]
        try:
            results = await asyncio.to_thread(self._run, live) if live else []
        except Exception as exc:  # the engine isolates item failures; this is a crash
            for entry in chunk:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        finally:
            self._last_batch_requests = len({item.request_key for item in live})
            self._last_batch_end = asyncio.get_running_loop().time()
        by_item: dict[int, ItemResult] = {
            id(item): result for item, result in zip(live, results, strict=True)
        }
        for entry in chunk:
            if not entry.future.done():
                entry.future.set_result(
                    [by_item.get(id(item), AbandonedError()) for item in entry.items]
                )
