"""Authentication and authorisation failures, as the HTTP edge renders them."""

from __future__ import annotations

from services.core.errors import ServiceError

BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="rayscribe"'}


class AuthenticationError(ServiceError):
    """No usable token: 401. `reason` (a short code) and the token's claimed `kid` and
    issuer go to the log; the client gets one generic message, so a prober learns nothing
    about which check failed."""

    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"

    def __init__(self, reason: str, *, kid: str | None = None, issuer: str | None = None) -> None:
        super().__init__(
            "Missing or invalid bearer token: send a valid access token as "
            "`Authorization: Bearer <token>`.",
            headers=dict(BEARER_CHALLENGE),
        )
        self.reason = reason
        self.kid = kid
        self.issuer = issuer


class PermissionDeniedError(ServiceError):
    """A valid token without the role the endpoint needs: 403."""

    status_code = 403
    error_type = "invalid_request_error"
    default_code = "permission_denied"

    def __init__(self, role: str) -> None:
        super().__init__(f"This token lacks the role this endpoint needs ({role!r}).")
        self.reason = "missing_role"
        self.role = role
