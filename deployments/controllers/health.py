"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from deployments.dependencies import ReadinessServiceDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the ingress answers. Cheap, touches nothing else."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, readiness: ReadinessServiceDep) -> JSONResponse:
    """Readiness: 200 when every required check (model, database) is ok, else 503.

    `model` and `jobs` are state the ingress holds (refreshed in the background), so this
    answers at once under any load; `redis` and `jobs` are reported but never required.
    """
    result = await readiness.check()
    body = {"status": "ready" if result.ready else "unavailable", **result.checks}
    body["auth"] = request.app.state.auth.settings.mode.value  # `off` must be visible
    return JSONResponse(body, status_code=200 if result.ready else 503)
