"""The seam to Ray's Jobs API: the batches service talks to a `RayJobs`, never to Ray.

The real one (`cluster/ray_jobs.py`) wraps `ray.job_submission.JobSubmissionClient` with the
cluster's token, which only the service holds; unit tests use a fake. Methods are blocking
(the Jobs client is synchronous): the service calls them in a thread. Failures to reach the
cluster raise `RayJobsError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from services.bulk.batches_tables import BatchState


class RayJobStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


STATE_OF: dict[RayJobStatus, BatchState] = {
    RayJobStatus.PENDING: BatchState.QUEUED,
    RayJobStatus.RUNNING: BatchState.RUNNING,
    RayJobStatus.STOPPED: BatchState.STOPPED,
    RayJobStatus.SUCCEEDED: BatchState.SUCCEEDED,
    RayJobStatus.FAILED: BatchState.FAILED,
}


@dataclass(frozen=True)
class RayJobInfo:
    status: RayJobStatus
    message: str | None = None
    """Ray's own words on a failed or stopped job (shown as the batch's error)."""


@dataclass(frozen=True)
class RayJobSpec:
    submission_id: str
    entrypoint: str
    env_vars: dict[str, str]
    metadata: dict[str, str]


class RayJobs(Protocol):
    def submit(self, spec: RayJobSpec) -> str:
        """Submit a job under `spec.submission_id`; returns Ray's job id (the same)."""

    def info(self, submission_id: str) -> RayJobInfo | None:
        """The job's status, or None when the cluster does not know it."""

    def stop(self, submission_id: str) -> None:
        """Ask Ray to stop the job (a no-op for a finished one)."""

    def logs(self, submission_id: str) -> str:
        """The job's driver log so far."""
