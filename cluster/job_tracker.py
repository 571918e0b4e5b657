"""The JobTracker: a detached, named Ray actor that runs asynchronous jobs.

A thin shell around `services.jobs.runner.JobRunner`: it builds the runner's resources in
its own process and runs it on an event loop in a background thread, so that the loop
starts again by itself whenever Ray restarts the actor (`max_restarts=-1` re-runs the
constructor). PostgreSQL holds the truth; the tracker only coordinates, so killing it loses
nothing: its successor takes a new epoch and takes over the leases at once.

One tracker per Serve application (`job-tracker:<app>` in the `rayscribe` namespace). The
ingress gets or creates it at start; when the code or settings differ from the running
tracker's (a redeploy), the ingress replaces it (`ensure_tracker`).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path
from typing import Any

import ray
from ray import serve

from services.core.logging import configure_logging, get_logger
from services.core.settings import Settings

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


@ray.remote(max_restarts=-1, max_task_retries=0)
class JobTracker:
    def __init__(self, settings: Settings, app_name: str, version: str) -> None:
        configure_logging(settings.logging.level)
        self._settings = settings
        self._app_name = app_name
        self._version = version
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._runner: Any = None
        self._started = threading.Event()
        threading.Thread(target=self._serve_forever, name="job-tracker", daemon=True).start()

    def _serve_forever(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from deployments.transcriber import ServeTranscriber
        from services.jobs.wiring import build_job_runtime

        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        runtime = build_job_runtime(self._settings, nudge=self._wake.set)
        while True:  # Serve or the database may not be up yet: keep trying
            try:
                handle = serve.get_deployment_handle("WhisperTranscriber", app_name=self._app_name)
                runner = runtime.runner(tracker_name(self._app_name), ServeTranscriber(handle))
                await runner.start()
                break
            except Exception as exc:
                log.warning("tracker_start_failed", error=repr(exc))
                await asyncio.sleep(self._settings.jobs.poll_interval_s)
        self._runner = runner
        self._started.set()
        await self._runner.run_forever(self._wake)

    def nudge(self) -> None:
        """New work was queued: look now instead of at the next poll."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def version(self) -> str:
        return self._version

    def status(self) -> dict[str, Any]:
        runner = self._runner
        return {
            "version": self._version,
            "started": self._started.is_set(),
            "epoch": runner.epoch if runner else None,
            "jobs_in_flight": sorted(runner.running) if runner else [],
        }


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
