"""The coalescer merges batches that queued behind a busy model, and drops abandoned items."""

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np

from services.transcription.coalescer import AbandonedError, BatchCoalescer
from services.transcription.domain import SAMPLE_RATE, DecodeOptions, Segment
from services.transcription.packing import ItemResult, Piece, WorkItem


def _item(seconds: float) -> WorkItem:
    samples = int(seconds * SAMPLE_RATE)
    return WorkItem(
        speech=np.zeros(samples, dtype=np.float32),
        pieces=[Piece(0, 0, samples)],
        decode=DecodeOptions(language="en"),
    )


class _SlowModel:
    """Stands in for the engine's batch function: records each call, takes a while."""

    def __init__(self) -> None:
        self.calls: list[list[WorkItem]] = []
        self.lock = threading.Lock()

    def __call__(self, items: list[WorkItem]) -> list[ItemResult]:
        with self.lock:
            self.calls.append(items)
        time.sleep(0.2)
        return [[_segment(item)] for item in items]


def _coalescer(
    run: Callable[[list[WorkItem]], list[ItemResult]],
    *,
    max_windows: int,
    max_wait_s: float = 0.3,
    quiet_s: float = 0.1,
) -> BatchCoalescer:
    """A coalescer with the deployment's default waits unless a test says otherwise."""
    return BatchCoalescer(run, max_windows=max_windows, max_wait_s=max_wait_s, quiet_s=quiet_s)


def _segment(item: WorkItem) -> Segment:
    return Segment(
        id=0, seek=0, start=0.0, end=item.samples / SAMPLE_RATE, text=str(id(item)), tokens=[],
        temperature=0.0, avg_logprob=0.0, compression_ratio=1.0, no_speech_prob=0.0,
    )  # fmt: skip


async def test_batches_that_queue_behind_a_busy_model_run_as_one() -> None:
    model = _SlowModel()
    coalescer = _coalescer(model, max_windows=8)
    batches = [[_item(5)] for _ in range(6)]
    first = asyncio.create_task(coalescer.submit(batches[0]))
    await asyncio.sleep(0.05)  # the model is busy with the first batch...
    rest = [asyncio.create_task(coalescer.submit(b)) for b in batches[1:]]
    results = await asyncio.gather(first, *rest)
    assert [len(call) for call in model.calls] == [1, 5]  # ...so the others ran together
    for batch, result in zip(batches, results, strict=True):
        assert [r[0].text for r in result] == [str(id(i)) for i in batch]  # type: ignore[index]


async def test_the_window_budget_is_respected() -> None:
    model = _SlowModel()
    coalescer = _coalescer(model, max_windows=2)
    blocker = asyncio.create_task(coalescer.submit([_item(1)]))
    await asyncio.sleep(0.05)
    waiting = [asyncio.create_task(coalescer.submit([_item(20)])) for _ in range(4)]
    await asyncio.gather(blocker, *waiting)
    assert [len(call) for call in model.calls] == [1, 2, 2]  # 20 s items: one per window


async def test_a_budget_changed_while_the_model_runs_applies_to_the_next_batch() -> None:
    model = _SlowModel()
    coalescer = _coalescer(model, max_windows=8)
    blocker = asyncio.create_task(coalescer.submit([_item(1)]))
    await asyncio.sleep(0.05)
    waiting = [asyncio.create_task(coalescer.submit([_item(20)])) for _ in range(4)]
    coalescer.max_windows = 2  # reconfigure() while the first batch decodes
    await asyncio.gather(blocker, *waiting)
    assert [len(call) for call in model.calls] == [1, 2, 2]  # not [1, 4]


async def test_abandoned_items_never_run() -> None:
    model = _SlowModel()
    coalescer = _coalescer(model, max_windows=8)
    blocker = asyncio.create_task(coalescer.submit([_item(1)]))
    await asyncio.sleep(0.05)
    gone, kept = _item(3), _item(3)
    gone_task = asyncio.create_task(coalescer.submit([gone]))
    kept_task = asyncio.create_task(coalescer.submit([kept]))
    await asyncio.sleep(0)
    gone.abandoned = True  # its caller disconnected while the model was busy
    _, gone_result, kept_result = await asyncio.gather(blocker, gone_task, kept_task)
    assert model.calls[1] == [kept]
    assert isinstance(gone_result[0], AbandonedError)
    assert not isinstance(kept_result[0], Exception)


async def test_an_engine_crash_fails_the_waiting_batches_not_the_coalescer() -> None:
    def crash(items: list[WorkItem]) -> list[ItemResult]:
        raise RuntimeError("boom")

    coalescer = _coalescer(crash, max_windows=8)
    results = await asyncio.gather(coalescer.submit([_item(1)]), return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    coalescer._run = _SlowModel()  # the next batch still runs
    assert len(await coalescer.submit([_item(1)])) == 1


def _keyed(coalescer: BatchCoalescer, seconds: float) -> WorkItem:
    item = _item(seconds)
    item.request_key = coalescer.announce()
    item.last_of_request = True
    return item


async def test_a_lone_request_never_waits_for_company() -> None:
    model = _SlowModel()
    coalescer = _coalescer(model, max_windows=8, max_wait_s=1.0)
    for _ in range(2):
        started = asyncio.get_running_loop().time()
        await coalescer.submit([_keyed(coalescer, 3)])
        assert asyncio.get_running_loop().time() - started < 0.5  # 0.2 s of model, no wait


async def test_under_load_the_first_arrival_waits_for_the_others() -> None:
    model = _SlowModel()
    coalescer = _coalescer(model, max_windows=8, max_wait_s=1.0, quiet_s=0.2)
    # A batch of several requests runs: the service is under load...
    await asyncio.gather(*(coalescer.submit([_keyed(coalescer, 3)]) for _ in range(3)))

    # ...its callers come back one after another; the first does not run alone.
    async def later(delay: float) -> list[ItemResult]:
        await asyncio.sleep(delay)
        return await coalescer.submit([_keyed(coalescer, 3)])

    await asyncio.gather(*(later(d) for d in (0.0, 0.05, 0.1, 0.15)))
    assert [len(call) for call in model.calls] == [3, 4]


async def test_an_announced_request_still_in_vad_is_waited_for() -> None:
    model = _SlowModel()
    coalescer = _coalescer(model, max_windows=8, max_wait_s=1.0)
    key = coalescer.announce()  # a request is running its VAD

    async def arrives_late() -> list[ItemResult]:
        await asyncio.sleep(0.1)
        item = _item(3)
        item.request_key, item.last_of_request = key, True
        return await coalescer.submit([item])

    await asyncio.gather(coalescer.submit([_keyed(coalescer, 3)]), arrives_late())
    assert [len(call) for call in model.calls] == [2]


async def test_interactive_work_runs_before_queued_background_jobs() -> None:
    model = _SlowModel()
    coalescer = _coalescer(model, max_windows=1)
    blocker = asyncio.create_task(coalescer.submit([_item(1)]))
    await asyncio.sleep(0.05)
    job_chunk = _item(20)
    job_chunk.background = True
    request = _item(20)
    job_task = asyncio.create_task(coalescer.submit([job_chunk]))  # queued first...
    await asyncio.sleep(0)
    request_task = asyncio.create_task(coalescer.submit([request]))
    await asyncio.gather(blocker, job_task, request_task)
    assert model.calls[1:] == [[request], [job_chunk]]  # ...but the caller goes first
