"""The errors that carry `Retry-After` keep their statuses, codes and default delays."""

from services.core.errors import OverloadedError, TooManyRequestsError, UnavailableError


def test_retry_after_defaults_and_overrides() -> None:
    cases = (
        (OverloadedError("busy"), 503, "overloaded", "1"),
        (UnavailableError("down"), 503, "unavailable", "5"),
        (TooManyRequestsError("slow down"), 429, "rate_limited", "5"),
        (TooManyRequestsError("cap", code="stream_cap", retry_after_s=2), 429, "stream_cap", "2"),
        (UnavailableError("down", retry_after_s=0), 503, "unavailable", "0"),
    )
    for error, status, code, retry_after in cases:
        assert (error.status_code, error.code, error.headers) == (
            status,
            code,
            {"Retry-After": retry_after},
        ), error.message
