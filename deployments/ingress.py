"""The HTTP ingress deployment: builds the replica's resources, then serves the FastAPI app.

Resources are built in the constructor (Serve does not honour FastAPI lifespan state
reliably), and `__serve_build_asgi_app__` hands Serve the app built around them.

Readiness of the model replica and of the job tracker is held here, refreshed every
`HEALTH_REFRESH_S` on background threads: the model as Serve's controller sees it (a
running replica has passed its health checks), the tracker from its `status()` with a short
timeout. `/readyz` reads these values; it never sends anything through the model's queue.
"""

from __future__ import annotations

from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from cluster.job_tracker import NAMESPACE, ensure_tracker, tracker_name
from cluster.whisper_client import ServeTranscriber
from deployments.dependencies import build_container
from deployments.fastapi_app import create_app
from services.core.health import HeldStatus, Refresher
from services.core.logging import configure_logging, get_logger
from services.core.settings import Settings
from services.jobs.wiring import build_job_runtime
from services.transcription.model_files import served_model_id

log = get_logger(__name__)

MODEL_DEPLOYMENT = "WhisperTranscriber"
HEALTH_REFRESH_S = 2.0
TRACKER_STATUS_TIMEOUT_S = 2.0
# A held value this old means its refresher is stuck: report down rather than old news.
HEALTH_MAX_AGE_S = 3 * HEALTH_REFRESH_S + TRACKER_STATUS_TIMEOUT_S


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(self, transcriber: DeploymentHandle[Any], settings: Settings) -> None:
        configure_logging(settings.logging.level)
        self._app_name = serve.get_replica_context().app_name
        self._tracker: Any = None
        self._tracker_call: Any = None
        self._model_status = HeldStatus(max_age_s=HEALTH_MAX_AGE_S)
        self._jobs_status = HeldStatus(max_age_s=HEALTH_MAX_AGE_S)
        runtime = build_job_runtime(settings, nudge=self._nudge_tracker)
        self._container = build_container(
            settings,
            ServeTranscriber(transcriber),
            served_model_id(settings),
            runtime,
            model=self._model_status,
            jobs=self._jobs_status,
        )
        try:
            self._tracker = ensure_tracker(settings, self._app_name)
        except Exception as exc:  # submissions still work; the tracker polls when it is back
            log.warning("tracker_unavailable", error=repr(exc))
        self._refresher = Refresher(
            {
                "model": (self._model_status, self._model_is_up),
                "jobs": (self._jobs_status, self._tracker_is_up),
            },
            interval_s=HEALTH_REFRESH_S,
        )
        self._refresher.start()

    def _nudge_tracker(self) -> None:
        if self._tracker is not None:
            try:
                self._tracker.nudge.remote()
            except Exception as exc:
                log.debug("tracker_nudge_failed", error=repr(exc))

    def _model_is_up(self) -> bool:
        """At least one model replica RUNNING, as Serve's controller sees it (blocking)."""
        app = serve.status().applications.get(self._app_name)
        deployment = app.deployments.get(MODEL_DEPLOYMENT) if app else None
        if deployment is None:
            return False
        return any(
            getattr(state, "value", state) == "RUNNING" and count > 0
            for state, count in deployment.replica_states.items()
        )

    def _tracker_is_up(self) -> bool:
        """The tracker answers `status()` in time and its loop is started and alive.

        A call that has not answered is waited on again rather than sent anew, so a hung
        tracker never accumulates calls.
        """
        if self._tracker is None:
            try:  # looked up only: creating or replacing it is the constructor's business
                self._tracker = ray.get_actor(tracker_name(self._app_name), namespace=NAMESPACE)
            except ValueError:
                return False
        if self._tracker_call is None:
            self._tracker_call = self._tracker.status.remote()
        done, _ = ray.wait([self._tracker_call], timeout=TRACKER_STATUS_TIMEOUT_S)
        if not done:
            return False
        call, self._tracker_call = self._tracker_call, None
        try:
            status = ray.get(call)
        except Exception:
            self._tracker = None  # gone for good (replaced): look it up again next time
            raise
        return bool(status.get("started")) and bool(status.get("loop_alive"))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._container)
