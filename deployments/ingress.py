"""The HTTP ingress deployment: builds the replica's resources, then serves the FastAPI app.

Resources are built in the constructor (Serve does not honour FastAPI lifespan state
reliably), and `__serve_build_asgi_app__` hands Serve the app built around them.

Readiness of the model replica, the job tracker and the speaker labeller (when enabled) is
held here, refreshed every `HEALTH_REFRESH_S` on background threads: the model and the
speaker labeller as Serve's controller sees them (a running replica has passed its health
checks), the tracker from its `status()`, asked through its handle with a short timeout.
`/readyz` reads these values; it never sends anything through the model's queue, and
nothing here blocks the replica's event loop.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from cluster import metrics
from cluster.whisper_client import ServeTranscriber
from deployments.dependencies import build_ingress_resources
from deployments.diarizer import DEPLOYMENT_NAME as DIARIZER_DEPLOYMENT
from deployments.diarizer import ServeDiarizer
from deployments.fastapi_app import create_app
from deployments.transcriber import deployment_name
from services.core.disk_metrics import DiskSampler
from services.core.health import HeldStatus, Refresher
from services.core.logging import configure_logging, get_logger
from services.core.settings import Settings
from services.resources import build_resources

log = get_logger(__name__)

HEALTH_REFRESH_S = 2.0
TRACKER_STATUS_TIMEOUT_S = 2.0
# A held value this old means its refresher is stuck: report down rather than old news.
HEALTH_MAX_AGE_S = 3 * HEALTH_REFRESH_S + TRACKER_STATUS_TIMEOUT_S


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(
        self,
        transcribers: dict[str, DeploymentHandle[Any]],
        tracker: DeploymentHandle[Any],
        settings: Settings,
        diarizer: DeploymentHandle[Any] | None = None,
    ) -> None:
        """`transcribers`: each served model's Whisper deployment, by model id; `diarizer`:
        the `SpeakerDiarizer` deployment when speaker labels are enabled."""
        configure_logging(settings.logging.level)
        self._app_name = serve.get_replica_context().app_name
        self._tracker = tracker
        self._tracker_call: Any = None  # a DeploymentResponse not yet answered
        self._model_status = HeldStatus(max_age_s=HEALTH_MAX_AGE_S)
        self._jobs_status = HeldStatus(max_age_s=HEALTH_MAX_AGE_S)
        self._speakers_status = HeldStatus(max_age_s=HEALTH_MAX_AGE_S)
        shared = build_resources(settings, nudge=self._nudge_tracker)
        self._model_deployments = [deployment_name(model) for model in shared.models]
        self._resources = build_ingress_resources(
            shared,
            {model_id: ServeTranscriber(handle) for model_id, handle in transcribers.items()},
            model=self._model_status,
            jobs=self._jobs_status,
            diarizer=ServeDiarizer(diarizer) if diarizer is not None else None,
            speakers=self._speakers_status if diarizer is not None else None,
        )
        probes = {
            "model": (self._model_status, self._model_is_up),
            "jobs": (self._jobs_status, self._tracker_is_up),
        }
        if diarizer is not None:
            probes["speakers"] = (self._speakers_status, self._diarizer_is_up)
        self._refresher = Refresher(probes, interval_s=HEALTH_REFRESH_S)
        self._refresher.start()
        metrics.install("ingress")
        self._sampling = metrics.start_sampling(
            DiskSampler(settings, getattr(self._resources.shared.storage, "root", None)), 15.0
        )

    def _nudge_tracker(self) -> None:
        """Fire and forget: a lost nudge only costs one poll interval."""
        try:
            self._tracker.nudge.remote()
        except Exception as exc:
            log.debug("tracker_nudge_failed", error=repr(exc))

    def _model_is_up(self) -> bool:
        """Every served model has a replica RUNNING, as Serve's controller sees it
        (blocking)."""
        return self._running(self._model_deployments)

    def _diarizer_is_up(self) -> bool:
        return self._running([DIARIZER_DEPLOYMENT])

    def _running(self, names: list[str]) -> bool:
        """Each named deployment of this app has a replica RUNNING (blocking)."""
        app = serve.status().applications.get(self._app_name)
        if app is None:
            return False
        for name in names:
            deployment = app.deployments.get(name)
            if deployment is None or not any(
                getattr(state, "value", state) == "RUNNING" and count > 0
                for state, count in deployment.replica_states.items()
            ):
                return False
        return True

    def _tracker_is_up(self) -> bool:
        """A tracker answers `status()` in time and its loop is started and alive (blocking:
        runs on the refresher's thread).

        A call that has not answered is waited on again rather than sent anew, so a hung
        tracker never accumulates calls.
        """
        call = self._tracker_call
        if call is None:
            call = self._tracker_call = self._tracker.status.remote()
        try:
            status = call.result(timeout_s=TRACKER_STATUS_TIMEOUT_S)
        except TimeoutError:
            return False
        except Exception:
            self._tracker_call = None  # failed (replica gone): ask anew next time
            raise
        self._tracker_call = None
        return bool(status.get("started")) and bool(status.get("loop_alive"))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._resources)

    async def __del__(self) -> None:
        """Serve calls this on a graceful stop, after the requests in flight finished."""
        self._refresher.stop()
        self._sampling.set()
        await self._resources.shared.close()
