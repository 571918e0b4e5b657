"""Batches: the expected failures, each with its HTTP status and OpenAI error fields."""

from __future__ import annotations

from services.core.errors import NotFoundError, ServiceError, UnavailableError


class PathNotAllowedError(ServiceError):
    """An input or output outside `bulk.allowed_roots`: the service never reads or writes it."""

    status_code = 403
    error_type = "invalid_request_error"
    default_code = "path_not_allowed"


class BatchNotFoundError(NotFoundError):
    default_code = "batch_not_found"

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"No batch with id {batch_id[:64]!r}.", param="batch_id")


class BulkUnavailableError(UnavailableError):
    """No Ray cluster configured, or it did not answer."""

    default_code = "bulk_unavailable"


class RayJobsError(Exception):
    """The Ray Jobs API could not be reached or refused the call (raised by `RayJobs`)."""
