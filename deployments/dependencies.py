"""Shared resources of one ingress replica, and the `Depends` aliases that hand them out.

The container is built once per replica (in the ingress constructor, or by a test) and
hung on `app.state`; routes receive its parts through the aliases below. A test swaps a
part by building the container with a different one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Annotated

from fastapi import Depends, Request

from services.core.db import ping
from services.core.health import Check, HeldStatus, ReadinessService
from services.core.settings import Settings
from services.jobs.service import JobsService
from services.jobs.wiring import JobRuntime
from services.transcription.service import Transcriber, TranscriptionService


@dataclass
class Container:
    settings: Settings
    transcription: TranscriptionService
    jobs: JobsService
    readiness: ReadinessService


READINESS_TIMEOUT_S = 1.5
"""Each live check (database, Redis) gets this long, so /readyz answers within 2 s."""


def build_container(
    settings: Settings,
    transcriber: Transcriber,
    model_id: str,
    runtime: JobRuntime,
    *,
    model: Check | None = None,
    jobs: Check | None = None,
) -> Container:
    """`model` and `jobs` are held states a refresher keeps (the ingress passes them); the
    probe never calls the model replica. Without `model` the transcriber is in-process
    (tests, tools) and counts as up; without `jobs` no tracker is reported."""
    optional: dict[str, Check] = {}
    if settings.redis.url is not None:
        optional["redis"] = runtime.cache.ping
    if jobs is not None:
        # Reported, not required: submissions are durable and sync traffic works without
        # the tracker, so its absence must not take the ingress out of rotation.
        optional["jobs"] = jobs
    return Container(
        settings=settings,
        transcription=TranscriptionService(
            transcriber,
            runtime.results,
            model_id=model_id,
            sync_max_duration_s=settings.server.sync_max_duration_s,
        ),
        jobs=runtime.jobs,
        readiness=ReadinessService(
            required={
                "model": model or HeldStatus(ok=True),
                "database": partial(ping, runtime.sessions),
            },
            optional=optional,
            timeout_s=READINESS_TIMEOUT_S,
        ),
    )


def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


def _transcription(container: Annotated[Container, Depends(get_container)]) -> TranscriptionService:
    return container.transcription


def _jobs(container: Annotated[Container, Depends(get_container)]) -> JobsService:
    return container.jobs


def _readiness(container: Annotated[Container, Depends(get_container)]) -> ReadinessService:
    return container.readiness


TranscriptionServiceDep = Annotated[TranscriptionService, Depends(_transcription)]
JobsServiceDep = Annotated[JobsService, Depends(_jobs)]
ReadinessServiceDep = Annotated[ReadinessService, Depends(_readiness)]
