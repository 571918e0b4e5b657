"""The JobTracker: a detached, named Ray actor that runs asynchronous jobs.

A thin shell around `services.jobs.runner.JobRunner`: it builds the runner's resources in
its own process and runs it on an event loop in a background thread, so that the loop
starts again by itself whenever Ray restarts the actor (`max_restarts=-1` re-runs the
constructor), and the process exits when the loop dies, so that Ray restarts it.
PostgreSQL holds the truth; the tracker only coordinates, so killing it loses nothing:
its successor takes a new lease token and takes over its predecessor's leases at once.

One tracker per Serve application (`job-tracker:<app>` in the `rayscribe` namespace). The
ingress gets or creates it at start; when the code or settings differ from the running
tracker's (a redeploy), the ingress replaces it (`ensure_tracker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import serve

from cluster.whisper_client import ServeTranscriber
from services.core.logging import configure_logging, get_logger
from services.core.settings import Settings
from services.jobs.runner import JobRunner
from services.jobs.wiring import JobRuntime, build_job_runtime
from services.transcription.service import Transcriber

log = get_logger(__name__)

NAMESPACE = "rayscribe"
_SOURCE_ROOTS = ("services", "cluster")


def tracker_name(app_name: str) -> str:
    return f"job-tracker:{app_name}"


def code_version(settings: Settings) -> str:
    """Changes whenever the job code or the settings change: a redeploy replaces the tracker."""
    digest = hashlib.sha256(settings.model_dump_json().encode())
    root = Path(__file__).resolve().parents[1]
    for package in _SOURCE_ROOTS:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class TrackerProcess:
    """The tracker's process, without Ray: builds the runner and keeps its loop alive.

    The loop runs on its own event loop in a thread, so the actor's methods (`status`,
    `nudge`) answer while it works. Start failures (Serve or the database not up yet) are
    retried and shown by `status()`; once running, the loop only returns by raising, and
    then the whole process exits (`os._exit(1)`) so that Ray restarts the actor and its
    successor takes over the leases at once. `ray.actor.exit_actor()` would not do: Ray
    does not restart an actor that exited on purpose.
    """

    def __init__(
        self,
        settings: Settings,
        app_name: str,
        version: str,
        *,
        transcriber: Callable[[], Transcriber] | None = None,
        exit_process: Callable[[int], None] = os._exit,
    ) -> None:
        configure_logging(settings.logging.level)
        self._settings = settings
        self._app_name = app_name
        self._version = version
        self._transcriber = transcriber or self._serve_transcriber
        self._exit_process = exit_process
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._runner: JobRunner | None = None
        self._started = threading.Event()
        self._closing = False
        self._error: str | None = None
        self._dead = False
        self._thread = threading.Thread(target=self._serve_forever, name="job-tracker", daemon=True)
        self._thread.start()

    def _serve_forever(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            if self._closing:
                return
            self._dead = True
            self._error = f"the tracker loop died ({type(exc).__name__})"
            log.exception("tracker_loop_died")
        if not self._closing:
            self._dead = True
            self._exit_process(1)

    def _serve_transcriber(self) -> Transcriber:
        handle = serve.get_deployment_handle("WhisperTranscriber", app_name=self._app_name)
        return ServeTranscriber(handle)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._main_task = asyncio.current_task()
        self._wake = asyncio.Event()
        runtime: JobRuntime | None = None
        while True:  # Serve or the database may not be up yet: keep trying
            try:
                if runtime is None:
                    runtime = build_job_runtime(self._settings, nudge=self._wake.set)
                runner = runtime.runner(tracker_name(self._app_name), self._transcriber())
                await runner.start()
                break
            except Exception as exc:
                self._error = _safe_error("the tracker could not start", exc)
                log.warning("tracker_start_failed", error=repr(exc), exc_info=True)
                await asyncio.sleep(self._settings.jobs.poll_interval_s)
        self._runner = runner
        self._error = None
        self._started.set()
        await runner.run_forever(self._wake)
        raise RuntimeError("the tracker loop returned")

    def nudge(self) -> None:
        """New work was queued: look now instead of at the next poll."""
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._wake.set)

    def version(self) -> str:
        return self._version

    def loop_alive(self) -> bool:
        """The loop's thread runs and, once started, the loop turned recently (not stuck)."""
        if self._dead or not self._thread.is_alive():
            return False
        runner = self._runner
        if runner is None or runner.loop_at is None:
            return True
        stuck_after_s = max(60.0, 10 * self._settings.jobs.poll_interval_s)
        return time.monotonic() - runner.loop_at < stuck_after_s

    def status(self) -> dict[str, Any]:
        """What `/readyz` shows: `jobs` is up only when started and loop_alive."""
        runner = self._runner
        return {
            "version": self._version,
            "started": self._started.is_set(),
            "loop_alive": self.loop_alive(),
            "epoch": runner.epoch if runner else None,
            "error": self._error,
            "jobs_in_flight": sorted(runner.running) if runner else [],
        }

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the loop without exiting the process (tests; Ray kills the real one)."""
        self._closing = True
        loop, task = self._loop, self._main_task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout_s)


@ray.remote(max_restarts=-1, max_task_retries=0)
class JobTracker(TrackerProcess):
    """The detached, named actor Ray restarts whenever its process dies."""


def _safe_error(what: str, exc: BaseException) -> str:
    """For `status()`: the exception's type only; its text may hold addresses or paths."""
    return f"{what} ({type(exc).__name__}); see the tracker's log"


def ensure_tracker(settings: Settings, app_name: str) -> Any:
    """Get the app's tracker, replacing it if it runs other code; create it if missing."""
    name = tracker_name(app_name)
    version = code_version(settings)
    try:
        current = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        current = None
    if current is not None:
        try:
            running_version = str(ray.get(current.version.remote(), timeout=30))
        except Exception as exc:  # restarting or unreachable: leave it, it will come back
            log.warning("tracker_version_unknown", error=repr(exc))
            return current
        if running_version == version:
            return current
        log.info("tracker_replaced", old=running_version, new=version)
        ray.kill(current, no_restart=True)
        _wait_until_gone(name)
    return JobTracker.options(  # type: ignore[attr-defined]
        name=name,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=settings.jobs.tracker_num_cpus,
    ).remote(settings, app_name, version)


def _wait_until_gone(name: str, timeout_s: float = 30.0) -> None:
    """A killed actor's name stays taken for a moment; creating too early would reuse it."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return
        time.sleep(0.2)
