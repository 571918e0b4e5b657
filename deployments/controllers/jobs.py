"""Asynchronous jobs: submit (202 + Location), poll, fetch the result, cancel, list, follow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from deployments.auth import TranscriberDep, require_transcriber
from deployments.controllers.forms import (
    TRANSCRIPT_RESPONSES,
    UPLOAD_ERRORS,
    FileField,
    RequestForm,
)
from deployments.controllers.transcriptions import rendered_response
from deployments.dependencies import JobsServiceDep, PageDep, TranscriptionServiceDep
from deployments.errors import error_responses
from deployments.limits import JobAdmissionDep
from services.core.errors import InvalidRequestError
from services.jobs.streams import Expired, Item, KeepAlive, StreamLimiter, StreamSlot, paced
from services.jobs.tables import JobStatus
from services.jobs.views import JobPage, JobView
from services.transcription.domain import ResponseFormat, TimestampGranularity
from services.transcription.request_speakers import MAX_REFERENCE_FIELD_BYTES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_transcriber)])
# Every route takes the caller (`TranscriberDep`, 403 without the role) and passes
# `caller.visible_owner` down: another owner's job then answers 404 like a missing one.

RECONNECT_RETRY_MS = 2000
"""The `retry:` hint sent when a stream ends at its maximum lifetime."""

MAX_EVENT_ID_DIGITS = 18


def _location(request: Request, job_id: str) -> str:
    return f"{request.scope.get('root_path', '')}/v1/jobs/{job_id}"


SUBMITTED: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "Stored durably and queued (or the job this Idempotency-Key made).",
        "headers": {
            "Location": {"description": "The job's URL.", "schema": {"type": "string"}},
            "Idempotent-Replayed": {
                "description": "`true` when this answers a retry with a known key.",
                "schema": {"type": "string"},
            },
        },
    }
}


@router.post(
    "",
    status_code=202,
    summary="Submit audio for asynchronous transcription",
    responses={**SUBMITTED, **UPLOAD_ERRORS, **error_responses(409)},
    # known_speaker_references[] are audio clips as data URLs (as on /v1/audio/transcriptions)
    form_limits={"max_part_size": MAX_REFERENCE_FIELD_BYTES},
)
async def submit_job(
    request: Request,
    response: Response,
    caller: TranscriberDep,
    jobs: JobsServiceDep,
    transcription: TranscriptionServiceDep,
    admission: JobAdmissionDep,
    file: FileField,
    form: RequestForm,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JobView:
    fields = transcription.check(form.for_route(form.task, job=True))
    view, created = await admission.submit(
        file.file,
        lambda quota: jobs.submit(
            file.file, fields, owner=caller.owner, idempotency_key=idempotency_key, quota=quota
        ),
    )
    response.headers["Location"] = _location(request, view.id)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return view


@router.get("", summary="Jobs, newest first", responses=error_responses(400))
async def list_jobs(
    caller: TranscriberDep,
    jobs: JobsServiceDep,
    page: PageDep,
    status: JobStatus | None = None,
) -> JobPage:
    return await jobs.page(
        owner=caller.visible_owner, status=status, limit=page.limit, cursor=page.cursor
    )


@router.get("/{job_id}", summary="A job's status and progress", responses=error_responses(404))
async def get_job(job_id: str, caller: TranscriberDep, jobs: JobsServiceDep) -> JobView:
    return await jobs.get(job_id, owner=caller.visible_owner)


@router.get(
    "/{job_id}/result",
    summary="The transcript of a succeeded job",
    description="In the format it was submitted with, unless `response_format` (and "
    "`timestamp_granularities[]`) ask for another: every format can be had later.",
    responses={**TRANSCRIPT_RESPONSES, **error_responses(400, 404, 409, 410)},
)
async def get_result(
    job_id: str,
    caller: TranscriberDep,
    jobs: JobsServiceDep,
    response_format: ResponseFormat | None = None,
    timestamp_granularities: Annotated[
        list[TimestampGranularity] | None, Query(alias="timestamp_granularities[]")
    ] = None,
) -> Response:
    rendered = await jobs.result(
        job_id, caller.visible_owner, response_format, timestamp_granularities or []
    )
    return rendered_response(rendered)


@router.delete(
    "/{job_id}",
    summary="Cancel a job, or delete a finished job's data",
    responses=error_responses(404),
)
async def delete_job(job_id: str, caller: TranscriberDep, jobs: JobsServiceDep) -> JobView:
    return await jobs.cancel_or_delete(job_id, owner=caller.visible_owner)


def _last_event_id(
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> int | None:
    """The version of the last event the client has; ids are the job's `version`."""
    if last_event_id is None or last_event_id.strip() == "":
        return None
    value = last_event_id.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= MAX_EVENT_ID_DIGITS):
        raise InvalidRequestError(
            "Last-Event-ID must be the id of an event this stream sent (a whole number).",
            param="Last-Event-ID",
            code="invalid_value",
        )
    return int(value)


def _client_key(request: Request) -> str | None:
    """The client's address as the trusted proxy reports it, or None without one.

    A proxy appends the address it saw to X-Forwarded-For, so the last entry is the one it
    vouches for; earlier entries came from the client and could be anything.
    """
    header = request.app.state.resources.settings.server.trusted_client_header
    if header is None:
        return None
    forwarded = request.headers.get(header, "").rsplit(",", 1)[-1].strip()
    if forwarded:
        return forwarded
    return request.client.host if request.client else None


async def _stream_slot(
    job_id: str,
    request: Request,
    caller: TranscriberDep,
    jobs: JobsServiceDep,
    last_event_id: Annotated[int | None, Depends(_last_event_id)],
) -> AsyncIterator[StreamSlot]:
    """Checks (400, 404, 429) run here, before the response starts; the slot is held until
    the stream ends in any way (finish, lifetime, disconnect, error)."""
    await jobs.get(job_id, owner=caller.visible_owner)
    limiter: StreamLimiter = request.app.state.streams
    slot = limiter.acquire(job_id, _client_key(request))
    try:
        yield slot
    finally:
        slot.release()


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    summary="Server-Sent Events of a job's status changes",
    responses=error_responses(400, 404, 429, by_reference=True),
)
async def job_events(
    job_id: str,
    request: Request,
    caller: TranscriberDep,
    jobs: JobsServiceDep,
    slot: Annotated[StreamSlot, Depends(_stream_slot)],
    last_event_id: Annotated[int | None, Depends(_last_event_id)],
) -> AsyncIterator[ServerSentEvent]:
    """`status` events (id = the job's version; a reconnect with `Last-Event-ID` gets only
    newer ones), `end` when the job finishes, or `reconnect` at the stream's maximum
    lifetime. Comments keep an idle connection alive."""
    server = request.app.state.resources.settings.server
    last_sent = last_event_id if last_event_id is not None else -1
    updates = paced(
        jobs.events(job_id, owner=caller.visible_owner),
        keepalive_s=server.sse_keepalive_s,
        lifetime_s=server.sse_max_lifetime_s,
    )
    try:
        async for update in updates:
            if isinstance(update, KeepAlive):
                yield ServerSentEvent(comment="keep-alive")
            elif isinstance(update, Expired):
                yield ServerSentEvent(
                    event="reconnect",
                    data={"reason": "max_lifetime", "last_event_id": _id_or_none(last_sent)},
                    id=_id_or_none(last_sent),
                    retry=RECONNECT_RETRY_MS,
                )
                return
            elif isinstance(update, Item) and update.value.version > last_sent:
                view: JobView = update.value
                last_sent = view.version
                yield ServerSentEvent(event="status", data=view, id=str(view.version))
    finally:
        await updates.aclose()  # type: ignore[attr-defined]
    yield ServerSentEvent(event="end", raw_data="{}")


def _id_or_none(version: int) -> str | None:
    return str(version) if version >= 0 else None
