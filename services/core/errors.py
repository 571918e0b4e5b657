"""Expected failures as classes that carry their HTTP status and OpenAI error fields.

Services raise these; the HTTP edge renders them as
`{"error": {"message", "type", "param", "code"}}`. Anything else that escapes is a bug
and becomes a 500.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or {}


class InvalidRequestError(ServiceError):
    status_code = 400
    error_type = "invalid_request_error"


class NotFoundError(ServiceError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class PayloadTooLargeError(ServiceError):
    status_code = 413
    error_type = "invalid_request_error"


class UnsupportedMediaTypeError(ServiceError):
    status_code = 415
    error_type = "invalid_request_error"


class RetryLaterError(ServiceError):
    """A refusal that tells the client when to come back: `Retry-After: retry_after_s`
    (the class's `default_retry_after_s` unless the raiser knows better)."""

    default_retry_after_s: ClassVar[int] = 5

    def __init__(
        self, message: str, *, code: str | None = None, retry_after_s: int | None = None
    ) -> None:
        seconds = self.default_retry_after_s if retry_after_s is None else retry_after_s
        super().__init__(message, code=code, headers={"Retry-After": str(seconds)})


class OverloadedError(RetryLaterError):
    """The system is at capacity; the client should retry after `retry_after_s`."""

    status_code = 503
    error_type = "server_error"
    default_code = "overloaded"
    default_retry_after_s = 1


class UnavailableError(RetryLaterError):
    """A dependency the request needs is down."""

    status_code = 503
    error_type = "server_error"
    default_code = "unavailable"


class ConflictError(ServiceError):
    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class GoneError(ServiceError):
    status_code = 410
    error_type = "invalid_request_error"
    default_code = "gone"


class RequestTimeoutError(ServiceError):
    """The client sent its request body too slowly."""

    status_code = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"


class TooManyRequestsError(RetryLaterError):
    """A per-job, per-client or global cap was reached; retry after `retry_after_s`."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limited"


class InsufficientStorageError(ServiceError):
    """Not enough free disk to store the upload (and keep the configured reserve)."""

    status_code = 507
    error_type = "server_error"
    default_code = "insufficient_storage"
