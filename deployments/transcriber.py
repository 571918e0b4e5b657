"""`WhisperTranscriber`: the model replica, batching work across concurrent requests.

A request is prepared on its own (VAD, window-sized work items, language detection) and
its items join the replica's batch queue. `@serve.batch` gathers items from every request
in flight, weighs them in 30 s windows, and hands them to the engine's batch function off
the event loop. A caller that disconnects is cancelled: its items leave the queue.

Batch size and wait come from `user_config` and are applied in `reconfigure()` without a
restart. Callers talk to this deployment through `cluster.whisper_client.ServeTranscriber`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.metrics import Counter, Histogram

from services.core.logging import configure_logging, get_logger
from services.core.settings import Settings
from services.transcription.assembly import assemble
from services.transcription.coalescer import BatchCoalescer
from services.transcription.domain import Transcript, TranscriptionOptions, Waveform
from services.transcription.engine import WhisperEngine
from services.transcription.packing import ItemResult, WorkItem, count_windows
from services.transcription.watchdog import CallWatchdog

log = get_logger(__name__)

DEFAULT_MAX_BATCH_SIZE = 8


class BatchingConfig(BaseModel):
    """The deployment's `user_config`: tunables applied live by `reconfigure()`."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=DEFAULT_MAX_BATCH_SIZE, ge=1)
    """Most 30 s windows decoded in one batch."""

    batch_wait_timeout_s: float = Field(default=0.01, ge=0)
    """How long the first item of a batch waits for company."""

    @classmethod
    def from_user_config(
        cls, user_config: dict[str, Any], max_ongoing_requests: int | None
    ) -> BatchingConfig:
        """Validate a `user_config`, refusing a batch size the deployment could never fill."""
        config = cls.model_validate(user_config)
        if max_ongoing_requests is not None and config.max_batch_size > max_ongoing_requests:
            raise ValueError(
                f"max_batch_size={config.max_batch_size} can never fill: the deployment's "
                f"max_ongoing_requests is {max_ongoing_requests}; raise it first (waiting "
                "batch items count towards it)."
            )
        return config


@serve.deployment
class WhisperTranscriber:
    def __init__(self, settings: Settings) -> None:
        configure_logging(settings.logging.level)
        self._engine = WhisperEngine.from_settings(settings)
        self._engine.warm_up()
        self._coalescer = BatchCoalescer(self._run_engine, max_windows=DEFAULT_MAX_BATCH_SIZE)
        self._watchdog = CallWatchdog(settings.whisper.hung_call_s)
        self._ready = True
        self._stats = {"batches": 0, "items": 0, "windows": 0, "retried": 0, "fallbacks": 0}
        self._windows = Counter(
            "rayscribe_windows_decoded", description="30 s windows run through the model."
        )
        self._fill = Histogram(
            "rayscribe_window_fill_seconds",
            description="Seconds of speech per 30 s window in each decoded batch.",
            boundaries=[2, 5, 10, 15, 20, 25, 28, 30],
        )
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
        config = BatchingConfig.from_user_config(user_config, _max_ongoing_requests())
        batched: Any = self._run_batch  # @serve.batch adds the setters; its typing hides them
        batched.set_max_batch_size(config.max_batch_size)
        batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self._coalescer.max_windows = config.max_batch_size
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
        """Counters since start, plus the process's peak RSS: for benchmarks and ops."""
        return {**self._stats, "pid": os.getpid(), "peak_rss_mb": _peak_rss_mb()}

    async def transcribe(
        self,
        audio: Waveform,
        options: TranscriptionOptions,
        request_id: str | None = None,
        background: bool = False,
    ) -> Transcript:
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            # Announced while VAD runs, so a free model waits briefly for this request.
            key = self._coalescer.announce()
            try:
                prepared = await asyncio.to_thread(self._engine.prepare, audio, options)
            except BaseException:
                self._coalescer.settle(key)
                raise
            for item in prepared.items:
                item.request_key = key
                item.background = background
            if prepared.items:
                prepared.items[-1].last_of_request = True
            try:
                results = await asyncio.gather(*(self._run_batch(i) for i in prepared.items))
            except asyncio.CancelledError:
                # The caller went away: whatever of its work has not run yet is dropped.
                for item in prepared.items:
                    item.abandoned = True
                log.info("request_abandoned", items=len(prepared.items))
                raise
            finally:
                self._coalescer.settle(key)
            transcript = assemble(prepared, results)
            log.info(
                "transcribed",
                audio_s=round(prepared.duration_s, 2),
                items=len(prepared.items),
                language=prepared.language,
            )
            return transcript

    # Serve forms the next batch while the previous one runs; several may wait at once and
    # the coalescer merges them when the model frees up (see services/transcription/coalescer).
    @serve.batch(
        max_batch_size=DEFAULT_MAX_BATCH_SIZE,
        batch_wait_timeout_s=0.01,
        max_concurrent_batches=16,
        batch_size_fn=count_windows,
    )
    async def _run_batch(self, items: list[WorkItem]) -> list[ItemResult]:
        return await self._coalescer.submit(items)

    def _run_engine(self, items: list[WorkItem]) -> list[ItemResult]:
        """One engine call on a worker thread; the coalescer runs one at a time."""
        with self._watchdog.call():
            results = self._engine.run(items)
        stats = self._engine.last_run
        self._stats["batches"] += 1
        self._stats["items"] += len(items)
        self._stats["windows"] += stats.windows
        self._stats["retried"] += stats.retried
        self._stats["fallbacks"] += stats.fallbacks
        self._windows.inc(stats.windows)
        self._fill.observe(stats.fill_s)
        log.debug("batch_decoded", items=len(items), windows=stats.windows, fill_s=stats.fill_s)
        return results


def _peak_rss_mb() -> float:
    """VmHWM of this process (Linux), in MB; 0 where /proc is not available."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _max_ongoing_requests() -> int | None:
    try:
        context = serve.get_replica_context()
    except Exception:  # outside a replica (unit tests): nothing to check against
        return None
    config = getattr(context, "_deployment_config", None)
    return getattr(config, "max_ongoing_requests", None)
