"""429s with the IETF `RateLimit-*` headers and a `Retry-After` the client can rely on."""

from __future__ import annotations

import math

from services.core.errors import ServiceError
from services.limits.gcra import Decision


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds - 1e-6))


def limit_headers(limit: float, remaining: int, reset_s: float) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(math.floor(limit)),
        "RateLimit-Remaining": str(max(0, remaining)),
        "RateLimit-Reset": str(max(0, math.ceil(reset_s - 1e-6))),
    }


class LimitExceededError(ServiceError):
    status_code = 429
    error_type = "rate_limit_error"

    def __init__(
        self, message: str, *, code: str, retry_after_s: float, limit: float, remaining: int = 0
    ) -> None:
        retry = _whole_seconds(retry_after_s)
        headers = {"Retry-After": str(retry), **limit_headers(limit, remaining, retry)}
        super().__init__(message, code=code, headers=headers)
        self.retry_after_s = retry


class RateLimitExceededError(LimitExceededError):
    """Requests or audio-seconds per period: retry once the bucket has room."""

    def __init__(self, message: str, decision: Decision) -> None:
        super().__init__(
            message,
            code="rate_limit_exceeded",
            retry_after_s=decision.retry_after_s,
            limit=decision.limit,
            remaining=decision.remaining,
        )


class QuotaExceededError(LimitExceededError):
    """Concurrent jobs or stored bytes: retry once a job ends or stored audio expires."""

    def __init__(self, message: str, *, retry_after_s: float, limit: float) -> None:
        super().__init__(message, code="quota_exceeded", retry_after_s=retry_after_s, limit=limit)
