"""The FastAPI application, built from a container of shared resources (no Ray needed)."""

from __future__ import annotations

from fastapi import FastAPI

from deployments.controllers import health, jobs, model_list, transcriptions
from deployments.dependencies import Container
from deployments.errors import install_error_handlers
from deployments.limits import RateLimited, install_limits
from deployments.middleware import (
    MULTIPART_OVERHEAD_BYTES,
    BodyLimitMiddleware,
    RequestContextMiddleware,
    SlowBodyMiddleware,
)
from deployments.storage_guard import StorageGuardMiddleware
from services.jobs.streams import StreamCaps, StreamLimiter

DEFAULT_BODY_LIMIT_BYTES = 1024 * 1024


def create_app(container: Container) -> FastAPI:
    app = FastAPI(
        title="rayscribe",
        summary="OpenAI-compatible speech transcription on Ray Serve.",
        version="0.1.0",
    )
    app.state.container = container
    server = container.settings.server
    # Open event streams are counted per replica, so the limiter lives with the app.
    app.state.streams = StreamLimiter(
        StreamCaps(
            total=server.sse_max_streams,
            per_job=server.sse_max_streams_per_job,
            per_client=server.sse_max_streams_per_client if server.trusted_client_header else None,
        )
    )
    for router in (transcriptions.router, jobs.router, model_list.router):
        app.include_router(router, dependencies=[RateLimited])  # per-user request rate
    app.include_router(health.router)
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
    # Outermost last: the rate floor sees the raw body before the size limit counts it,
    # and the request id is bound around both, so their refusals are logged with it.
    app.add_middleware(
        SlowBodyMiddleware,
        min_rate_bytes_s=server.min_upload_rate_bytes_s,
        window_s=server.slow_body_window_s,
    )
    app.add_middleware(RequestContextMiddleware)
    install_limits(app, container.settings, container.readiness)  # quotas, CORS (outermost)
    return app
