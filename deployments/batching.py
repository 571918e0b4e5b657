"""The Whisper deployment's batching: its `user_config` (`BatchingConfig`) and the Serve
batch queue (`@serve.batch`) feeding the coalescer, which runs one engine call at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from services.transcription.coalescer import BatchCoalescer
from services.transcription.packing import ItemResult, WorkItem, count_windows


class BatchingConfig(BaseModel):
    """The deployment's `user_config`: every batching knob of both layers, in one place.

    `@serve.batch` forms batches of at most `max_batch_windows` 30 s windows, waiting
    `batch_wait_timeout_s` after the first item; the coalescer merges the batches that
    queued while the model was busy (up to the same window budget) and waits for company
    (`coalesce_max_wait_s`, `coalesce_quiet_s`). All of them change live through
    `reconfigure()`, except `max_concurrent_batches`: Serve takes it once, when the
    replica starts. Keep `max_batch_windows x max_concurrent_batches` at most the
    deployment's `max_ongoing_requests` (Ray's rule; a test checks serve_config.yaml).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_windows: int = Field(default=8, ge=1)
    """Most 30 s windows in one batch: the weight `@serve.batch` and the coalescer limit (a
    job's chunk runs whole, alone when it is larger: `WhisperTranscriber._as_one_unit`)."""

    batch_wait_timeout_s: float = Field(default=0.01, ge=0)
    """How long `@serve.batch` waits after a batch's first item for more."""

    coalesce_max_wait_s: float = Field(default=0.3, ge=0)
    """Longest the coalescer holds a batch for requests still in VAD or coming back."""

    coalesce_quiet_s: float = Field(default=0.1, ge=0)
    """Under load, the coalescer starts once no request arrived for this long."""

    max_concurrent_batches: int = Field(default=1, ge=1)
    """Batches Serve hands to the coalescer at once (read at replica start only); the
    hand-over is instant, so one is enough."""

    @property
    def max_ongoing_requests_needed(self) -> int:
        """What Ray asks of `max_ongoing_requests` for these batches ever to fill."""
        return self.max_batch_windows * self.max_concurrent_batches

    @classmethod
    def from_user_config(cls, user_config: Mapping[str, Any]) -> BatchingConfig:
        """Validate a `user_config`; the error names each bad key and the known ones."""
        try:
            return cls.model_validate(user_config)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in exc.errors()
            )
            raise ValueError(
                f"WhisperTranscriber's user_config is not a valid batching config: {problems}. "
                f"Known keys: {', '.join(cls.model_fields)}."
            ) from exc


class _Batcher(Protocol):
    """A `@serve.batch` function of one work item, with the two settings Serve can change.
    Its result is the item's place in the coalescer: await that for the item's result."""

    def __call__(self, item: WorkItem, /) -> Awaitable[asyncio.Future[ItemResult]]: ...

    def set_max_batch_size(self, new_max_batch_size: int) -> None: ...

    def set_batch_wait_timeout_s(self, new_batch_wait_timeout_s: float) -> None: ...


def batch_queue(coalescer: BatchCoalescer, config: BatchingConfig) -> _Batcher:
    """Serve's batch queue in front of the coalescer, built per replica rather than as a
    decorated method because `max_concurrent_batches` comes from the config.

    Serve forms a batch and hands it to the coalescer, which merges whatever queued while
    the model was busy. The hand-over returns at once (each item gets a future), so the
    Serve batch slot is never held while the model runs: every formed batch reaches the
    coalescer even with one concurrent batch, and Ray's rule (batch size x concurrent
    batches <= max_ongoing_requests) holds without admitting more requests."""
    running: set[asyncio.Task[list[ItemResult]]] = set()

    async def _run_batch(items: list[WorkItem]) -> list[asyncio.Future[ItemResult]]:
        task = asyncio.create_task(coalescer.submit(items))
        running.add(task)
        task.add_done_callback(running.discard)
        return [_result_of(task, index) for index in range(len(items))]

    batched = serve.batch(
        max_batch_size=config.max_batch_windows,
        batch_wait_timeout_s=config.batch_wait_timeout_s,
        max_concurrent_batches=config.max_concurrent_batches,
        batch_size_fn=count_windows,
    )(_run_batch)
    return cast(_Batcher, batched)


def _result_of(batch: asyncio.Task[list[ItemResult]], index: int) -> asyncio.Future[ItemResult]:
    """The result of one item of a batch. Its caller may cancel it (it went away) without
    touching the batch, which other callers' items share."""
    future: asyncio.Future[ItemResult] = asyncio.get_running_loop().create_future()

    def settle(done: asyncio.Task[list[ItemResult]]) -> None:
        if future.done():
            return
        if done.cancelled():
            future.cancel()
        elif (error := done.exception()) is not None:
            future.set_exception(error)
        else:
            future.set_result(done.result()[index])

    batch.add_done_callback(settle)
    return future
