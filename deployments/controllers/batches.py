"""Batches: bulk runs submitted as Ray jobs (role `bulk`): submit, read, list, stop, logs.

Every route takes the caller (403 without the role) and passes `caller.visible_owner`
down, so another owner's batch answers 404 like a missing one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import PlainTextResponse

from deployments.auth import require_bulk
from deployments.dependencies import BatchesServiceDep, PageDep
from deployments.errors import error_responses
from services.auth.principal import Principal
from services.bulk.batches_models import BatchPage, BatchRequest, BatchView
from services.bulk.batches_service import MAX_LOG_LINES
from services.bulk.batches_tables import BatchState

router = APIRouter(prefix="/v1/batches", tags=["batches"], dependencies=[Depends(require_bulk)])

BulkDep = Annotated[Principal, Depends(require_bulk)]
"""A caller who may run batches (or an admin)."""

SUBMITTED: dict[int | str, dict[str, Any]] = {
    201: {
        "description": "Stored and submitted to the Ray cluster as a job.",
        "headers": {"Location": {"description": "The batch's URL.", "schema": {"type": "string"}}},
    }
}
LOG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "The last lines of the job's log.", "content": {"text/plain": {}}}
}


@router.post(
    "",
    status_code=201,
    summary="Submit a bulk run (a Ray job) over files under the allowed roots",
    responses={**SUBMITTED, **error_responses(400, 403, 429, 503)},
)
async def submit_batch(
    body: BatchRequest,
    request: Request,
    response: Response,
    caller: BulkDep,
    batches: BatchesServiceDep,
) -> BatchView:
    view = await batches.submit(body, owner=caller.owner)
    response.headers["Location"] = f"{request.scope.get('root_path', '')}/v1/batches/{view.id}"
    return view


@router.get("", summary="Batches, newest first", responses=error_responses(400))
async def list_batches(
    caller: BulkDep,
    batches: BatchesServiceDep,
    page: PageDep,
    state: BatchState | None = None,
) -> BatchPage:
    return await batches.page(
        owner=caller.visible_owner, state=state, limit=page.limit, cursor=page.cursor
    )


@router.get(
    "/{batch_id}",
    summary="A batch's state, counts, output and Ray job id",
    responses=error_responses(404),
)
async def get_batch(batch_id: str, caller: BulkDep, batches: BatchesServiceDep) -> BatchView:
    return await batches.get(batch_id, owner=caller.visible_owner)


@router.delete(
    "/{batch_id}",
    summary="Stop a batch's Ray job (a finished batch is returned unchanged)",
    responses=error_responses(404, 503),
)
async def stop_batch(batch_id: str, caller: BulkDep, batches: BatchesServiceDep) -> BatchView:
    return await batches.stop(batch_id, owner=caller.visible_owner)


@router.get(
    "/{batch_id}/logs",
    summary="The last lines of the batch's Ray job log",
    response_class=PlainTextResponse,
    responses={**LOG_RESPONSE, **error_responses(400, 404, 503, by_reference=True)},
)
async def batch_logs(
    batch_id: str,
    caller: BulkDep,
    batches: BatchesServiceDep,
    tail: Annotated[int, Query(ge=1, le=MAX_LOG_LINES)] = 200,
) -> PlainTextResponse:
    text = await batches.logs(batch_id, owner=caller.visible_owner, tail=tail)
    return PlainTextResponse(text)
