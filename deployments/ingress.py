"""The HTTP ingress deployment: builds the replica's resources, then serves the FastAPI app.

Resources are built in the constructor (Serve does not honour FastAPI lifespan state
reliably), and `__serve_build_asgi_app__` hands Serve the app built around them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from cluster.job_tracker import ensure_tracker
from deployments.api import create_app
from deployments.dependencies import build_container
from deployments.transcriber import ServeTranscriber
from services.core.logging import configure_logging, get_logger
from services.core.settings import Settings
from services.jobs.wiring import build_job_runtime
from services.transcription.model_files import served_model_id

log = get_logger(__name__)


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(self, transcriber: DeploymentHandle[Any], settings: Settings) -> None:
        configure_logging(settings.logging.level)
        self._tracker: Any = None
        runtime = build_job_runtime(settings, nudge=self._nudge_tracker)
        self._container = build_container(
            settings, ServeTranscriber(transcriber), served_model_id(settings), runtime
        )
        try:
            self._tracker = ensure_tracker(settings, serve.get_replica_context().app_name)
        except Exception as exc:  # submissions still work; the tracker polls when it is back
            log.warning("tracker_unavailable", error=repr(exc))

    def _nudge_tracker(self) -> None:
        if self._tracker is not None:
            try:
                self._tracker.nudge.remote()
            except Exception as exc:
                log.debug("tracker_nudge_failed", error=repr(exc))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._container)
