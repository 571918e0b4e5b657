"""`WhisperTranscriber`: the model replica, batching work across concurrent requests.

A request is prepared on its own (VAD, window-sized work items, language detection) and
its items join the replica's batch queue. `@serve.batch` gathers items from every request
in flight, weighs them in 30 s windows, and hands them to the coalescer, which runs the
engine's batch function off the event loop. A caller that disconnects is cancelled: its
items leave the queue.

All batching knobs of both layers (Serve's batch queue and the coalescer) are one typed
`BatchingConfig` in the deployment's `user_config`, applied in `reconfigure()` without a
restart. Callers talk to this deployment through `cluster.whisper_client.ServeTranscriber`.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import structlog
from ray import serve

from cluster import metrics
from deployments.batching import BatchingConfig, batch_queue
from services.core.logging import configure_logging, get_logger
from services.core.metrics import telemetry
from services.core.settings import Settings
from services.transcription.assembly import assemble
from services.transcription.coalescer import BatchCoalescer
from services.transcription.domain import SAMPLE_RATE, Transcript, TranscriptionOptions, Waveform
from services.transcription.engine import WhisperEngine
from services.transcription.incremental import Heading, prepare_in_background
from services.transcription.models import ServedModel
from services.transcription.packing import (
    SHARED_WINDOW_SAMPLES,
    ItemResult,
    WorkItem,
    seal,
)
from services.transcription.streaming import StreamEvent, StreamStart, ramped_results
from services.transcription.watchdog import CallWatchdog

log = get_logger(__name__)


DEPLOYMENT_NAME = "WhisperTranscriber"
"""The default model's deployment; every other served model's is `WhisperTranscriber_<id>`."""


def deployment_name(model: ServedModel) -> str:
    """The Serve deployment of `model`: what a serve_config.yaml entry names to configure it.

    The default model's keeps the plain name, so a single-model config is unchanged."""
    if model.default:
        return DEPLOYMENT_NAME
    return f"{DEPLOYMENT_NAME}_{re.sub(r'[^A-Za-z0-9._-]', '_', model.id)}"


# Defaults only, the same as serve_config.yaml's `WhisperTranscriber` entry: a served model
# without an entry of its own runs like the default one. The config overrides any of them.
# The replica count is deliberately not an `autoscaling_config` here (the shipped entry's
# autoscaling_config is min = max = 1, i.e. one replica): a code default of autoscaling
# would outlive an entry's `num_replicas` (Serve keeps an autoscaling config from the code
# and then ignores the number), so `num_replicas: 2` in a config would silently run one
# replica. With Serve's fixed single replica as the default, an entry's explicit
# `num_replicas` wins, and an entry's `autoscaling_config` turns autoscaling on; Serve
# itself refuses an entry that sets both.
@serve.deployment(
    name=DEPLOYMENT_NAME,
    max_ongoing_requests=32,
    max_queued_requests=128,
    graceful_shutdown_timeout_s=60,
    health_check_period_s=10,
    health_check_timeout_s=30,
    ray_actor_options={"num_cpus": 1.5, "num_gpus": 0},
)
class WhisperTranscriber:
    def __init__(self, settings: Settings) -> None:
        configure_logging(settings.logging.level)
        metrics.install()
        self._engine = WhisperEngine.from_settings(settings)
        self._engine.warm_up()
        # Defaults until Serve calls reconfigure() with the user_config, before any traffic.
        self._batching = BatchingConfig()
        self._coalescer = BatchCoalescer(
            self._run_engine,
            max_windows=self._batching.max_batch_windows,
            max_wait_s=self._batching.coalesce_max_wait_s,
            quiet_s=self._batching.coalesce_quiet_s,
        )
        self._batch = batch_queue(self._coalescer, self._batching)
        self._batch_used = False
        self._units: set[asyncio.Task[list[ItemResult]]] = set()
        self._watchdog = CallWatchdog(settings.whisper.hung_call_s)
        self._ready = True
        self._stats = empty_stats()
        omp_threads = os.environ.get("OMP_NUM_THREADS")
        if omp_threads != str(settings.whisper.cpu_threads):
            log.warning(
                "omp_threads_mismatch",
                omp_num_threads=omp_threads,
                cpu_threads=settings.whisper.cpu_threads,
                hint="set OMP_NUM_THREADS in the deployment's runtime_env to cpu_threads",
            )
        log.info("transcriber_ready", model=self._engine.model_id, device=self._engine.device)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = BatchingConfig.from_user_config(user_config)
        started = self._batching.max_concurrent_batches
        if config.max_concurrent_batches != started:
            if self._batch_used:
                log.warning(
                    "batching_needs_restart",
                    max_concurrent_batches=config.max_concurrent_batches,
                    running=started,
                    hint="read when the replica starts; the rest of the config is applied",
                )
                config = config.model_copy(update={"max_concurrent_batches": started})
            else:  # no request has met the batch queue yet: build it as configured
                self._batch = batch_queue(self._coalescer, config)
        self._batch.set_max_batch_size(config.max_batch_windows)
        self._batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self._coalescer.max_windows = config.max_batch_windows
        self._coalescer.max_wait_s = config.coalesce_max_wait_s
        self._coalescer.quiet_s = config.coalesce_quiet_s
        self._batching = config
        log.info("batching_configured", **config.model_dump())

    def check_health(self) -> None:
        """Cheap by design: never transcribes and never waits behind a batch. Fails when
        the model is not loaded or one engine call has hung (busy is healthy), so Serve
        replaces the replica."""
        if not self._ready:
            raise RuntimeError("the model is not loaded")
        self._watchdog.check()

    async def ready(self) -> bool:
        return self._ready

    async def stats(self) -> dict[str, Any]:
        """Counters since start, the batching config in force, how long the current engine
        call has run (None when idle) and the process's peak RSS: for benchmarks and ops."""
        return {
            **self._stats,
            "batching": self._batching.model_dump(),
            "engine_busy_s": self._watchdog.oldest_s(),
            "pid": os.getpid(),
            "peak_rss_mb": _peak_rss_mb(),
        }

    async def transcribe(
        self,
        audio: Waveform,
        options: TranscriptionOptions,
        request_id: str | None = None,
        background: bool = False,
    ) -> Transcript:
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            # Announced while VAD runs, so a free model waits briefly for this request.
            arrived = time.monotonic()
            key = self._coalescer.announce()
            try:
                prepared = await asyncio.to_thread(self._engine.prepare, audio, options)
            except BaseException:
                self._coalescer.settle(key)
                raise
            for item in prepared.items:
                item.request_key = key
                item.background = background
                item.queued_at = time.monotonic()
            if prepared.items:
                prepared.items[-1].last_of_request = True
            try:
                self._batch_used = True
                if background:
                    results = await self._as_one_unit(prepared.items, key)
                else:
                    places = await asyncio.gather(*(self._batch(i) for i in prepared.items))
                    results = list(await asyncio.gather(*places))
            except asyncio.CancelledError:
                # The caller went away: whatever of its work has not run yet is dropped.
                for item in prepared.items:
                    item.abandoned = True
                log.info("request_abandoned", items=len(prepared.items))
                raise
            finally:
                self._coalescer.settle(key)
            transcript = assemble(prepared, results)
            telemetry.transcribed(
                self._engine.model_id,
                options.decode.task.value,
                prepared.duration_s,
                time.monotonic() - arrived,
            )
            log.info(
                "transcribed",
                audio_s=round(prepared.duration_s, 2),
                items=len(prepared.items),
                language=prepared.language,
            )
            return transcript

    async def transcribe_stream(
        self,
        audio: Waveform,
        options: TranscriptionOptions,
        request_id: str | None = None,
        background: bool = False,
    ) -> AsyncIterator[StreamEvent]:
        """`transcribe`, streamed (`handle.options(stream=True)`): `StreamStart`, then each
        item's segments in time order as its batch finishes. VAD runs block by block on a
        worker thread (`prepare_in_background`), so the first items are decoded while it
        goes on; items join the shared batch queue as `SubmissionRamp` allows (the first
        ones early and few). Closing the stream (the client went away) stops VAD and drops
        whatever has not run."""
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            key = self._coalescer.announce()
            stop = threading.Event()
            prepared = prepare_in_background(self._engine, audio, options, stop)
            items: list[WorkItem] = []
            finished = False
            try:
                heading = await anext(prepared)
                assert isinstance(heading, Heading)
                yield StreamStart(
                    language=heading.language,
                    language_probability=heading.language_probability,
                    duration_s=heading.duration_s,
                    items=None,
                )

                async def found() -> AsyncIterator[WorkItem]:
                    async for item in prepared:
                        assert isinstance(item, WorkItem)
                        item.request_key = key
                        item.background = background
                        items.append(item)
                        yield item

                def submit(batch: list[WorkItem]) -> list[Awaitable[ItemResult]]:
                    # Later items come as VAD and the ramp allow, never "on the way": the
                    # coalescer must not hold a batch for them.
                    self._coalescer.settle(key)
                    return [self._queued(item) for item in batch]

                self._batch_used = True
                async for done in ramped_results(
                    found(),
                    submit,
                    max_samples=self._batching.max_batch_windows * SHARED_WINDOW_SAMPLES,
                ):
                    yield done
                finished = True
            finally:
                stop.set()  # VAD stops at its next block; the reader closes with its task
                self._coalescer.settle(key)
                if not finished:
                    for item in items:
                        item.abandoned = True
                    log.info("stream_abandoned", items=len(items))
            log.info(
                "transcribed",
                audio_s=round(audio.shape[0] / SAMPLE_RATE, 2),
                items=len(items),
                streamed=True,
            )

    async def _queued(self, item: WorkItem) -> ItemResult:
        place = await self._batch(item)
        return await place

    async def _as_one_unit(self, items: list[WorkItem], key: int) -> list[ItemResult]:
        """A job's chunk, run in one engine call with windows of its own (`packing.seal`):
        its words never depend on other traffic, so a chunk decoded again (a retried or
        resumed job) gives the same words. It goes to the coalescer directly, as one entry,
        since Serve's batch queue would cut it at the window budget; interactive work queued
        meanwhile still runs first. The run survives its caller going away (its items are
        then marked abandoned and dropped if they have not run)."""
        seal(items, key)
        run = asyncio.create_task(self._coalescer.submit(items))
        self._units.add(run)
        run.add_done_callback(self._units.discard)
        return await asyncio.shield(run)

    async def detect_languages(self, audio: Waveform, request_id: str | None = None) -> Any:
        """Every language's probability for `audio`, most likely first (a multilingual
        model; one encoder pass, outside the batch queue)."""
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            return await asyncio.to_thread(self._engine.language_probabilities, audio)

    def _run_engine(self, items: list[WorkItem]) -> list[ItemResult]:
        """One engine call on a worker thread; the coalescer runs one at a time."""
        started = time.monotonic()
        with self._watchdog.call():
            results = self._engine.run(items)
        stats = self._engine.last_run
        telemetry.batch(
            self._engine.model_id,
            windows=stats.windows,
            fill_s=stats.fill_s,
            inference_s=time.monotonic() - started,
            queued_s=[started - item.queued_at for item in items if item.queued_at],
        )
        self._stats["batches"] += 1
        self._stats["items"] += len(items)
        self._stats["windows"] += stats.windows
        self._stats["retried"] += stats.retried
        self._stats["retry_windows"] += stats.retry_windows
        self._stats["fallbacks"] += stats.fallbacks
        log.debug("batch_decoded", items=len(items), windows=stats.windows, fill_s=stats.fill_s)
        return results


def empty_stats() -> dict[str, int]:
    """The replica's counters (`stats()`), all at zero."""
    keys = ("batches", "items", "windows", "retried", "retry_windows", "fallbacks")
    return dict.fromkeys(keys, 0)


def _peak_rss_mb() -> float:
    """VmHWM of this process (Linux), in MB; 0 where /proc is not available."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
