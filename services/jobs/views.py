"""Jobs: the views the API returns, built from the rows in `tables.py`."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from services.jobs.tables import Job, JobStatus


class Progress(BaseModel):
    done: int
    total: int | None


class JobView(BaseModel):
    """What `GET /v1/jobs/{id}` returns."""

    id: str
    object: str = "transcription.job"
    status: JobStatus
    task: str
    model: str
    owner: str | None
    attempts: int
    interruptions: int = 0
    version: int = 0
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    audio_duration_s: float | None
    progress: Progress
    error: str | None
    error_code: str | None = None

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(
            id=job.id,
            status=JobStatus(job.status),
            task=job.task,
            model=job.model,
            owner=job.owner,
            attempts=job.attempts,
            interruptions=job.interruptions or 0,
            version=job.version or 0,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            audio_duration_s=job.audio_duration_s,
            progress=Progress(done=job.progress_done, total=job.progress_total),
            error=job.error,
            error_code=job.error_code,
        )


class JobPage(BaseModel):
    object: str = "list"
    data: list[JobView]
    next_cursor: str | None
