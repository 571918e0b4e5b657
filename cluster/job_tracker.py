"""The JobTracker: a Serve deployment (no route) that runs asynchronous jobs.

`build_app` composes it: it is bound with the Whisper deployments' handles (and the
`SpeakerDiarizer`'s when speaker labels are enabled, for `diarized_json` jobs), and the ingress
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
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from cluster import metrics
from cluster.speaker_client import ServeDiarizer
from cluster.whisper_client import ServeTranscriber
from services.core.logging import configure_logging, get_logger
from services.core.settings import Settings
from services.jobs import metrics as job_metrics
from services.jobs.runner import JobRunner
from services.resources import Resources, build_resources
from services.transcription.service import SpeakerLabeller, Transcriber

log = get_logger(__name__)


class TrackerCore:
    """The tracker without Ray: builds its resources and keeps the runners' loops going.

    One runner per served model, each with its model's transcriber (its Whisper
    deployment): it claims only that model's jobs, heartbeats that model as served, and
    runs up to `jobs.max_concurrent` of them, so each model's jobs go to its own deployment
    and one model's backlog never holds up another's. The default model's runner is named
    `name`, the others `name:<model id>`; only the default's sweeps expired data.

    Construct it on a running event loop (Serve runs a replica's constructor on the loop
    its methods run on): the loops start at once as a task. Start failures (the database
    not up yet) are retried and shown by `status()`; once started, a loop only ends by
    raising, and then `check_health` fails so that Serve replaces the replica.
    """

    def __init__(
        self,
        settings: Settings,
        transcriber: Transcriber | Mapping[str, Transcriber],
        *,
        name: str,
        version: str = "",
        speakers: SpeakerLabeller | None = None,
    ) -> None:
        """`transcriber`: one per served model id, or one for the default model; `speakers`
        labels the speakers of `diarized_json` jobs (None: diarization is not enabled)."""
        configure_logging(settings.logging.level)
        self.name = name
        self._settings = settings
        self._version = version
        self._wakes: list[asyncio.Event] = []
        self._resources: Resources = build_resources(settings, nudge=self._wake_all)
        default = self._resources.model_id
        self._transcribers = (
            dict(transcriber) if isinstance(transcriber, Mapping) else {default: transcriber}
        )
        self._speakers = speakers
        self._runners: list[JobRunner] = []
        self._error: str | None = None
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._task = asyncio.get_running_loop().create_task(self._main())
        self._task.add_done_callback(self._loop_ended)

    def _wake_all(self) -> None:
        for wake in self._wakes:
            wake.set()

    async def _start(self, model_id: str) -> JobRunner:
        default = model_id == self._resources.model_id
        name = self.name if default else f"{self.name}:{model_id}"
        while True:  # the database may not be up yet: keep trying
            try:
                runner = self._resources.runner(
                    name, self._transcribers[model_id], model_id=model_id, speakers=self._speakers
                )
                runner.sweeps = default
                await runner.start()
                return runner
            except Exception as exc:
                self._error = _safe_error("the tracker could not start", exc)
                log.warning("tracker_start_failed", error=repr(exc), exc_info=True)
                await asyncio.sleep(self._settings.jobs.poll_interval_s)

    async def _main(self) -> None:
        runners = [await self._start(model.id) for model in self._resources.models]
        self._wakes = [asyncio.Event() for _ in runners]
        self._runners = runners
        self._error = None
        # Gauges from the database, sampled under the default model's lease token.
        self._sampler = job_metrics.start(self._metrics_sampler(runners[0]))
        loops = [
            asyncio.create_task(runner.run_forever(wake))
            for runner, wake in zip(runners, self._wakes, strict=True)
        ]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for loop in done:
                loop.result()  # a loop only ends by raising: that is fatal
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
        raise RuntimeError("the tracker loop returned")

    def _metrics_sampler(self, runner: JobRunner) -> job_metrics.JobMetricsSampler:
        return job_metrics.JobMetricsSampler(
            self._resources.sessions,
            token=lambda: runner.epoch,
            lease_s=self._settings.jobs.lease_s,
        )

    @property
    def _runner(self) -> JobRunner | None:
        """The default model's runner, once every runner started."""
        return self._runners[0] if self._runners else None

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if self._closing:
            return
        exc = None if task.cancelled() else task.exception()
        self._error = _safe_error("the tracker loop died", exc or asyncio.CancelledError())
        log.error("tracker_loop_died", exc_info=exc)

    async def nudge(self) -> None:
        """New work was queued: look now instead of at the next poll."""
        self._wake_all()

    def loop_alive(self) -> bool:
        """The loop task runs and, once started, each runner turned recently (not stuck)."""
        if self._task.done():
            return False
        stuck_after_s = max(60.0, 10 * self._settings.jobs.poll_interval_s)
        return all(
            runner.loop_at is None or time.monotonic() - runner.loop_at < stuck_after_s
            for runner in self._runners
        )

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
            "jobs_in_flight": sorted(job for r in self._runners for job in r.running),
            "models": {r.model_id: r.epoch for r in self._runners},
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
            for runner in self._runners:
                try:
                    await runner.stop()
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
        self,
        transcribers: dict[str, DeploymentHandle[Any]],
        settings: Settings,
        version: str = "",
        diarizer: DeploymentHandle[Any] | None = None,
    ) -> None:
        """`transcribers`: each served model's Whisper deployment, by model id; `diarizer`:
        the `SpeakerDiarizer` deployment when speaker labels are enabled."""
        metrics.install("tracker")
        context = serve.get_replica_context()
        name = f"job-tracker:{context.app_name}:{context.replica_id.unique_id}"
        clients = {model: ServeTranscriber(handle) for model, handle in transcribers.items()}
        speakers = ServeDiarizer(diarizer) if diarizer is not None else None
        super().__init__(settings, clients, name=name, version=version, speakers=speakers)

    async def __del__(self) -> None:
        """Serve calls this when it stops the replica gracefully (not after a kill)."""
        await self.shutdown()


def _safe_error(what: str, exc: BaseException) -> str:
    """For `status()`: the exception's type only; its text may hold addresses or paths."""
    return f"{what} ({type(exc).__name__}); see the tracker's log"
