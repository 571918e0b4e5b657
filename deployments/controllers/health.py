"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from deployments.dependencies import ReadinessServiceDep

router = APIRouter(tags=["health"])


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """`status`, then one `ok`/`down...` entry per check (`model`, `database`, `redis`...)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ready", "unavailable"]


READINESS: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "Every required check is ok."},
    503: {"model": Readiness, "description": "A required check failed; see its entry."},
}


@router.get("/healthz")
async def healthz() -> Liveness:
    """Liveness: the ingress answers. Cheap, touches nothing else."""
    return Liveness()


@router.get("/readyz", responses=READINESS)
async def readyz(request: Request, readiness: ReadinessServiceDep) -> JSONResponse:
    """Readiness: 200 when every required check (model, database) is ok, else 503.

    `model` and `jobs` are state the ingress holds (refreshed in the background), so this
    answers at once under any load; `redis` and `jobs` are reported but never required.
    """
    result = await readiness.check()
    body = {"status": "ready" if result.ready else "unavailable", **result.checks}
    body["auth"] = request.app.state.auth.settings.mode.value  # `off` must be visible
    return JSONResponse(body, status_code=200 if result.ready else 503)
