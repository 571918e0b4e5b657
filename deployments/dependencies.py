"""Shared resources of one ingress replica, and the `Depends` aliases that hand them out.

The container is built once per replica (in the ingress constructor, or by a test) and
hung on `app.state`; routes receive its parts through the aliases below. A test swaps a
part by building the container with a different one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from services.core.health import ReadinessService
from services.core.settings import Settings
from services.transcription.service import Transcriber, TranscriptionService


@dataclass
class Container:
    settings: Settings
    transcription: TranscriptionService
    readiness: ReadinessService


def build_container(settings: Settings, transcriber: Transcriber, model_id: str) -> Container:
    return Container(
        settings=settings,
        transcription=TranscriptionService(
            transcriber,
            model_id=model_id,
            max_upload_bytes=settings.server.max_upload_bytes,
            sync_max_duration_s=settings.server.sync_max_duration_s,
        ),
        readiness=ReadinessService(required={"model": transcriber.ready}),
    )


def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


def _transcription(container: Annotated[Container, Depends(get_container)]) -> TranscriptionService:
    return container.transcription


def _readiness(container: Annotated[Container, Depends(get_container)]) -> ReadinessService:
    return container.readiness


TranscriptionServiceDep = Annotated[TranscriptionService, Depends(_transcription)]
ReadinessServiceDep = Annotated[ReadinessService, Depends(_readiness)]
