"""Asynchronous jobs: submit (202 + Location), poll, fetch the result, cancel, list, follow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Form, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from deployments.controllers.forms import (
    FileField,
    FormatField,
    GranularitiesField,
    LanguageField,
    ModelField,
    PlainGranularitiesField,
    PromptField,
    TemperatureField,
    granularities,
)
from deployments.controllers.transcriptions import rendered_response
from deployments.dependencies import JobsServiceDep, TranscriptionServiceDep
from services.jobs.models import JobPage, JobStatus, JobView
from services.transcription.models import ResponseFormat, Task, TimestampGranularity

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

SSE_KEEPALIVE = ": keep-alive\n\n"


def _location(request: Request, job_id: str) -> str:
    return f"{request.scope.get('root_path', '')}/v1/jobs/{job_id}"


@router.post("", status_code=202, summary="Submit audio for asynchronous transcription")
async def submit_job(
    request: Request,
    response: Response,
    jobs: JobsServiceDep,
    transcription: TranscriptionServiceDep,
    file: FileField,
    model: ModelField,
    language: LanguageField = None,
    prompt: PromptField = None,
    response_format: FormatField = ResponseFormat.JSON,
    temperature: TemperatureField = 0.0,
    timestamp_granularities: GranularitiesField = None,
    timestamp_granularities_plain: PlainGranularitiesField = None,
    task: Annotated[Task, Form(description="`transcribe` or `translate` (into English).")] = (
        Task.TRANSCRIBE
    ),
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JobView:
    fields = transcription.build_request(
        task=task,
        model=model,
        language=language if task is Task.TRANSCRIBE else None,
        prompt=prompt,
        response_format=response_format,
        temperature=temperature,
        granularities=granularities(timestamp_granularities, timestamp_granularities_plain),
    )
    view, created = await jobs.submit(
        file.file, file.size, fields, owner=None, idempotency_key=idempotency_key
    )
    response.headers["Location"] = _location(request, view.id)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return view


@router.get("", summary="Jobs, newest first")
async def list_jobs(
    jobs: JobsServiceDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> JobPage:
    return await jobs.page(owner=None, status=status, limit=limit, cursor=cursor)


@router.get("/{job_id}", summary="A job's status and progress")
async def get_job(job_id: str, jobs: JobsServiceDep) -> JobView:
    return await jobs.get(job_id, owner=None)


@router.get("/{job_id}/result", summary="The transcript of a succeeded job")
async def get_result(
    job_id: str,
    jobs: JobsServiceDep,
    response_format: ResponseFormat | None = None,
    timestamp_granularities: Annotated[
        list[TimestampGranularity] | None, Query(alias="timestamp_granularities[]")
    ] = None,
) -> Response:
    rendered = await jobs.result(job_id, None, response_format, timestamp_granularities or [])
    return rendered_response(rendered)


@router.delete("/{job_id}", summary="Cancel a job, or delete a finished job's data")
async def delete_job(job_id: str, jobs: JobsServiceDep) -> JobView:
    return await jobs.cancel_or_delete(job_id, owner=None)


@router.get("/{job_id}/events", summary="Server-Sent Events of a job's status changes")
async def job_events(job_id: str, jobs: JobsServiceDep) -> StreamingResponse:
    await jobs.get(job_id, owner=None)  # 404 now, before the stream starts

    async def stream() -> AsyncIterator[str]:
        async for view in jobs.events(job_id, owner=None):
            yield f"event: status\ndata: {view.model_dump_json()}\n\n"
        yield "event: end\ndata: {}\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
