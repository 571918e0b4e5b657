"""The FastAPI application, built around the ingress's resources (no Ray needed)."""

from __future__ import annotations

from fastapi import FastAPI

from deployments.api_docs import serve_docs
from deployments.auth import AuthMiddleware, RoleMiddleware, build_authenticator, roles_by_prefix
from deployments.controllers import batches, health, jobs, model_list, transcriptions
from deployments.dependencies import IngressResources
from deployments.errors import install_error_handlers
from deployments.limits import RequestRateMiddleware, install_limits
from deployments.middleware import (
    BodyLimitMiddleware,
    RequestContextMiddleware,
    SlowBodyMiddleware,
)
from deployments.request_metrics import RequestMetricsMiddleware
from deployments.storage_guard import StorageGuardMiddleware
from services.jobs.streams import StreamCaps, StreamLimiter

DEFAULT_BODY_LIMIT_BYTES = 1024 * 1024
TITLE = "rayscribe"
ROUTERS = (transcriptions.router, jobs.router, model_list.router, batches.router)


def create_app(resources: IngressResources) -> FastAPI:
    app = FastAPI(
        title=TITLE,
        summary="OpenAI-compatible speech transcription on Ray Serve.",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
    )
    serve_docs(app, title=TITLE)
    app.state.resources = resources
    app.state.auth = build_authenticator(resources.settings.auth)
    server = resources.settings.server
    # Open event streams are counted per replica, so the limiter lives with the app.
    app.state.streams = StreamLimiter(
        StreamCaps(
            total=server.sse_max_streams,
            per_job=server.sse_max_streams_per_job,
            per_client=server.sse_max_streams_per_client if server.trusted_client_header else None,
        )
    )
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(health.router)  # probes: never rate-limited (`/v1/*` only)
    install_error_handlers(app)
    app.add_middleware(StorageGuardMiddleware, settings=resources.settings)
    # The one check of the upload size: the whole body, counted as it streams in.
    app.add_middleware(
        BodyLimitMiddleware,
        limits={
            "/v1/audio/transcriptions": server.max_upload_bytes,
            "/v1/audio/translations": server.max_upload_bytes,
            "/v1/audio/language": server.max_upload_bytes,
            "/v1/jobs": resources.settings.jobs.max_upload_bytes,
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
    # Per-user request rate: inside authentication (which names the user), outside
    # everything that reads the body, so a refused upload is not read.
    app.add_middleware(RequestRateMiddleware, limits=lambda: app.state.limits)
    # Inside the request context (its refusals carry the request id), outside everything
    # that reads the body: an unauthenticated upload is refused before it is read.
    # A caller without the route's role: 403 before the body is read, like a 401.
    app.add_middleware(RoleMiddleware, roles=roles_by_prefix(ROUTERS))
    app.add_middleware(AuthMiddleware, authenticator=app.state.auth)
    app.add_middleware(RequestContextMiddleware)
    install_limits(app, resources.settings, resources.readiness)  # quotas, CORS (outermost)
    app.add_middleware(RequestMetricsMiddleware, model=resources.transcription.model_id)
    return app
