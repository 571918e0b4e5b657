"""The JobTracker: a Serve deployment (no route) that runs asynchronous jobs.

`build_app` composes it: it is bound with the Whisper deployment's handle, and the ingress
gets its handle the same way, to nudge it when work is queued and to read its `status()`
for `/readyz`. Serve owns its lifecycle: it starts it with the app, restarts a replica
whose health check fails or whose process died, replaces it (rolling) when the app's
version changes and stops it with the app.

A thin async shell around `services.jobs.runner.JobRunner`. PostgreSQL holds the truth;
the tracker only coordinates, so several replicas can share the work (each claims with
SKIP LOCKED under a lease token of its own) and killing one loses nothing: its jobs are
requeued when their leases expire. A graceful stop (a redeploy, a scale-down) releases
its leases at once, so the next replica takes the jobs without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from cluster import metrics
from cluster.whisper_client import ServeTranscriber
from services.core.logging import configure_logging, get_logger
from services.core.settings import Settings
from services.jobs import metrics as job_metrics
from services.jobs.runner import JobRunner
from services.resources import Resources, build_resources
from services.transcription.service import Transcriber

log = get_logger(__name__)


class TrackerCore:
    """The tracker without Ray: builds its resources and keeps the runner's loop going.

    Construct it on a running event loop (Serve runs a replica's constructor on the loop
    its methods run on): the loop starts at once as a task. Start failures (the database
    not up yet) are retried and shown by `status()`; once started, the loop only ends by
    raising, and then `check_health` fails so that Serve replaces the replica.
    """

    def __init__(
        self, settings: Settings, transcriber: Transcriber, *, name: str, version: str = ""
    ) -> None:
        configure_logging(settings.logging.level)
        self.name = name
        self._settings = settings
        self._transcriber = transcriber
        self._version = version
        self._wake = asyncio.Event()
        self._resources: Resources = build_resources(settings, nudge=self._wake.set)
        self._runner: JobRunner | None = None
        self._error: str | None = None
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._task = asyncio.get_running_loop().create_task(self._main())
        self._task.add_done_callback(self._loop_ended)

    async def _main(self) -> None:
        while True:  # the database may not be up yet: keep trying
            try:
                runner = self._resources.runner(self.name, self._transcriber)
                await runner.start()
                break
            except Exception as exc:
                self._error = _safe_error("the tracker could not start", exc)
                log.warning("tracker_start_failed", error=repr(exc), exc_info=True)
                await asyncio.sleep(self._settings.jobs.poll_interval_s)
        self._runner = runner
        self._error = None
        self._sampler = job_metrics.start(self._metrics_sampler(runner))  # gauges from the db
        await runner.run_forever(self._wake)
        raise RuntimeError("the tracker loop returned")

    def _metrics_sampler(self, runner: JobRunner) -> job_metrics.JobMetricsSampler:
        return job_metrics.JobMetricsSampler(
            self._resources.sessions,
            token=lambda: runner.epoch,
            lease_s=self._settings.jobs.lease_s,
        )

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if self._closing:
            return
        exc = None if task.cancelled() else task.exception()
        self._error = _safe_error("the tracker loop died", exc or asyncio.CancelledError())
        log.error("tracker_loop_died", exc_info=exc)

    async def nudge(self) -> None:
        """New work was queued: look now instead of at the next poll."""
        self._wake.set()

    def loop_alive(self) -> bool:
        """The loop task runs and, once started, turned recently (not stuck)."""
        if self._task.done():
            return False
        runner = self._runner
        if runner is None or runner.loop_at is None:
            return True
        stuck_after_s = max(60.0, 10 * self._settings.jobs.poll_interval_s)
        return time.monotonic() - runner.loop_at < stuck_after_s

    async def status(self) -> dict[str, Any]:
        """What `/readyz` shows: `jobs` is up only when started and loop_alive."""
        runner = self._runner
        return {
            "name": self.name,
            "version": self._version,
            "started": runner is not None,
            "loop_alive": self.loop_alive(),
            "epoch": runner.epoch if runner else None,
            "error": self._error,
            "jobs_in_flight": sorted(runner.running) if runner else [],
        }

    async def check_health(self) -> None:
        """Fails only when the loop died: Serve then replaces the replica.

        A database outage is not a reason (the loop rides it out and `/readyz` shows it);
        failing here would only make Serve restart the tracker over and over.
        """
        if self._task.done() and not self._closing:
            raise RuntimeError(self._error or "the tracker loop ended")

    async def shutdown(self) -> None:
        """A graceful stop: no more claims, running jobs requeued at once, connections closed.

        Safe to call more than once; later calls wait for the first.
        """
        if self._closed is not None:
            await asyncio.shield(self._closed)
            return
        self._closed = asyncio.get_running_loop().create_future()
        self._closing = True
        try:
            if self._sampler is not None:
                self._sampler.cancel()
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            if self._runner is not None:
                try:
                    await self._runner.stop()
                except Exception as exc:  # the leases then expire instead
                    log.warning("tracker_leases_not_released", error=repr(exc))
            await self._resources.close()
        finally:
            self._closed.set_result(None)


@serve.deployment(
    name="JobTracker",
    num_replicas=1,
    health_check_period_s=10,
    graceful_shutdown_timeout_s=30,
    ray_actor_options={"num_cpus": 0.25},
)
class JobTracker(TrackerCore):
    """Defaults only; serve_config.yaml says how many replicas and how much CPU.

    Each replica is a tracker of its own (its name is the replica's id), so a rolling
    update's new replica never takes the old one's leases while it still runs them.
    """

    def __init__(
        self, transcriber: DeploymentHandle[Any], settings: Settings, version: str = ""
    ) -> None:
        metrics.install("tracker")
        context = serve.get_replica_context()
        name = f"job-tracker:{context.app_name}:{context.replica_id.unique_id}"
        super().__init__(settings, ServeTranscriber(transcriber), name=name, version=version)

    async def __del__(self) -> None:
        """Serve calls this when it stops the replica gracefully (not after a kill)."""
        await self.shutdown()


def _safe_error(what: str, exc: BaseException) -> str:
    """For `status()`: the exception's type only; its text may hold addresses or paths."""
    return f"{what} ({type(exc).__name__}); see the tracker's log"
