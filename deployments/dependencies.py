"""The ingress replica's resources, and the `Depends` aliases that hand them out.

`IngressResources` is the process's shared `Resources` (services/resources.py) plus the
parts only the HTTP edge needs: the transcription service and readiness. It is built once
per replica (in the ingress constructor, or by a test) and hung on `app.state`; routes
receive its parts through the aliases below. A test swaps a part by building it with a
different one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Annotated

from fastapi import Depends, Query, Request

from cluster.ray_jobs import RayJobsClient
from services.bulk.batches_ray import RayJobs
from services.bulk.batches_service import BatchesService
from services.core.db import ping
from services.core.health import Check, HeldStatus, ReadinessService
from services.core.paging import MAX_PAGE
from services.core.settings import Settings
from services.jobs.service import JobsService
from services.resources import Resources
from services.transcription.service import SpeakerLabeller, Transcriber, TranscriptionService


@dataclass
class IngressResources:
    shared: Resources
    transcription: TranscriptionService
    readiness: ReadinessService
    batches: BatchesService

    @property
    def settings(self) -> Settings:
        return self.shared.settings

    @property
    def jobs(self) -> JobsService:
        return self.shared.jobs


READINESS_TIMEOUT_S = 1.5
"""Each live check (database, Redis) gets this long, so /readyz answers within 2 s."""


def build_ingress_resources(
    shared: Resources,
    transcriber: Transcriber | Mapping[str, Transcriber],
    *,
    model: Check | None = None,
    jobs: Check | None = None,
    ray_jobs: RayJobs | None = None,
    diarizer: SpeakerLabeller | None = None,
    speakers: Check | None = None,
) -> IngressResources:
    """`model`, `jobs` and `speakers` are held states a refresher keeps (the ingress passes
    them); the probe never calls the model replica. Without `model` the transcriber is
    in-process (tests, tools) and counts as up; without `jobs` no tracker is reported, and
    without `speakers` no speaker-labelling deployment.

    `transcriber` is one per served model id, or a single one for the default model;
    `diarizer` labels speakers (`diarized_json`), absent unless diarization is enabled."""
    settings = shared.settings
    transcribers = (
        dict(transcriber) if isinstance(transcriber, Mapping) else {shared.model_id: transcriber}
    )
    optional: dict[str, Check] = {}
    if settings.redis.url is not None:
        optional["redis"] = shared.cache.ping
    if jobs is not None:
        # Reported, not required: submissions are durable and sync traffic works without
        # the tracker, so its absence must not take the ingress out of rotation.
        optional["jobs"] = jobs
    if speakers is not None:
        # Reported, not required: only `diarized_json` needs it.
        optional["speakers"] = speakers
    return IngressResources(
        shared=shared,
        transcription=TranscriptionService(
            transcribers,
            shared.model_results,
            models=shared.models,
            sync_max_duration_s=settings.server.sync_max_duration_s,
            diarizer=diarizer,
        ),
        readiness=ReadinessService(
            required={
                "model": model or HeldStatus(ok=True),
                "database": partial(ping, shared.sessions),
            },
            optional=optional,
            timeout_s=READINESS_TIMEOUT_S,
        ),
        batches=BatchesService(
            sessions=shared.sessions, settings=settings, ray=ray_jobs or _ray_jobs(settings)
        ),
    )


def _ray_jobs(settings: Settings) -> RayJobs | None:
    if settings.bulk.ray_address is None:
        return None
    return RayJobsClient(settings.bulk.ray_address, settings.bulk.ray_token)


def get_resources(request: Request) -> IngressResources:
    resources: IngressResources = request.app.state.resources
    return resources


_Resources = Annotated[IngressResources, Depends(get_resources)]


def _transcription(resources: _Resources) -> TranscriptionService:
    return resources.transcription


def _jobs(resources: _Resources) -> JobsService:
    return resources.jobs


def _readiness(resources: _Resources) -> ReadinessService:
    return resources.readiness


def _batches(resources: _Resources) -> BatchesService:
    return resources.batches


TranscriptionServiceDep = Annotated[TranscriptionService, Depends(_transcription)]
JobsServiceDep = Annotated[JobsService, Depends(_jobs)]
ReadinessServiceDep = Annotated[ReadinessService, Depends(_readiness)]
BatchesServiceDep = Annotated[BatchesService, Depends(_batches)]


@dataclass(frozen=True)
class PageQuery:
    """The paging query parameters every list route takes."""

    limit: int
    cursor: str | None


def _page_query(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20, cursor: str | None = None
) -> PageQuery:
    return PageQuery(limit=limit, cursor=cursor)


PageDep = Annotated[PageQuery, Depends(_page_query)]
