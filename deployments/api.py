"""The FastAPI application, built from a container of shared resources (no Ray needed)."""

from __future__ import annotations

from fastapi import FastAPI

from deployments.controllers import health, jobs, models, transcriptions
from deployments.dependencies import Container
from deployments.errors import install_error_handlers
from deployments.middleware import (
    MULTIPART_OVERHEAD_BYTES,
    BodyLimitMiddleware,
    RequestContextMiddleware,
)
from deployments.storage_guard import StorageGuardMiddleware

DEFAULT_BODY_LIMIT_BYTES = 1024 * 1024


def create_app(container: Container) -> FastAPI:
    app = FastAPI(
        title="rayscribe",
        summary="OpenAI-compatible speech transcription on Ray Serve.",
        version="0.1.0",
    )
    app.state.container = container
    for router in (transcriptions.router, jobs.router, models.router, health.router):
        app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(StorageGuardMiddleware, settings=container.settings)
    upload_limit = container.settings.server.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    app.add_middleware(
        BodyLimitMiddleware,
        limits={
            "/v1/audio/transcriptions": upload_limit,
            "/v1/audio/translations": upload_limit,
            "/v1/jobs": container.settings.jobs.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
        },
        default_limit_bytes=DEFAULT_BODY_LIMIT_BYTES,
    )
    app.add_middleware(RequestContextMiddleware)
    return app
