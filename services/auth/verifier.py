"""Access tokens (JWT) verified the way RFC 8725 and a Keycloak realm expect.

Algorithms are pinned by settings, never read from the token; the token's algorithm must
also be the one of the key its `kid` names (so an HS256 token "signed" with an RSA public
key is refused before any HMAC is computed). `iss`, `aud`, `exp`, `iat` and `sub` are
required, `nbf` is honoured, with a small leeway. Keycloak's ID and refresh tokens carry
`typ` `ID` and `Refresh` and are refused; access tokens say `Bearer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt
from jwt.exceptions import (
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuedAtError,
    InvalidIssuerError,
    InvalidSignatureError,
    InvalidTokenError,
    MissingRequiredClaimError,
)

from services.auth.errors import AuthenticationError
from services.auth.keys import KeyCache, KeyFetchError
from services.auth.principal import Principal, Role
from services.core.auth_settings import AuthSettings
from services.core.errors import UnavailableError

REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
MAX_TOKEN_CHARS = 16 * 1024
"""Longer tokens are refused unparsed (Keycloak's are 1-3 KB)."""
MAX_OWNER_CHARS = 255
"""`owner` is stored in a 255-character column."""
MAX_LOGGED_CHARS = 200

_REASONS: list[tuple[type[InvalidTokenError], str]] = [
    (ExpiredSignatureError, "expired"),
    (ImmatureSignatureError, "not_yet_valid"),
    (InvalidIssuedAtError, "bad_iat"),
    (InvalidIssuerError, "wrong_issuer"),
    (InvalidAudienceError, "wrong_audience"),
    (MissingRequiredClaimError, "missing_claim"),
    (InvalidAlgorithmError, "algorithm_not_allowed"),
    (InvalidSignatureError, "bad_signature"),
]


def _reason_of(exc: InvalidTokenError) -> str:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "malformed"


def _short(value: object) -> str | None:
    """A claim as it may be logged: a string, cut short (it comes from an unverified token)."""
    return value[:MAX_LOGGED_CHARS] if isinstance(value, str) else None


def _role_names(claim: object) -> set[str]:
    if isinstance(claim, Mapping):
        roles = claim.get("roles")
        if isinstance(roles, list):
            return {role for role in roles if isinstance(role, str)}
    return set()


class TokenVerifier:
    def __init__(self, settings: AuthSettings, keys: KeyCache) -> None:
        if settings.issuer is None or settings.audience is None:
            raise ValueError("token verification needs auth.issuer and auth.audience")
        self._settings = settings
        self._issuer: str = settings.issuer
        self._audience: str = settings.audience
        self._keys = keys
        self._roles = {
            settings.transcriber_role: Role.TRANSCRIBER,
            settings.bulk_role: Role.BULK,
            settings.admin_role: Role.ADMIN,
        }

    @property
    def keys(self) -> KeyCache:
        return self._keys

    async def verify(self, token: str) -> Principal:
        """The caller a token proves, or `AuthenticationError` saying why not (401)."""
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthenticationError("token_too_long")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except InvalidTokenError as exc:
            raise AuthenticationError("malformed") from exc
        kid, issuer = _short(header.get("kid")), _short(unverified.get("iss"))
        if header.get("alg") not in self._settings.algorithms:
            raise AuthenticationError("algorithm_not_allowed", kid=kid, issuer=issuer)
        try:
            key = await self._keys.key(kid)
        except KeyFetchError as exc:
            raise UnavailableError(
                "The identity provider's signing keys cannot be fetched; retry later."
            ) from exc
        if key is None:
            raise AuthenticationError("unknown_kid", kid=kid, issuer=issuer)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self._settings.algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._settings.leeway_s,
                options={"require": REQUIRED_CLAIMS},
            )
        except InvalidTokenError as exc:
            raise AuthenticationError(_reason_of(exc), kid=kid, issuer=issuer) from exc
        return self._principal(claims, kid)

    def _principal(self, claims: dict[str, Any], kid: str | None) -> Principal:
        issuer = self._issuer
        typ = claims.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() != "bearer"):
            raise AuthenticationError("not_an_access_token", kid=kid, issuer=issuer)
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise AuthenticationError("bad_subject", kid=kid, issuer=issuer)
        owner = f"{issuer}#{subject}"
        if len(owner) > MAX_OWNER_CHARS:
            raise AuthenticationError("subject_too_long", kid=kid, issuer=issuer)
        client = claims.get("azp")
        allowed = self._settings.allowed_clients
        if allowed is not None and client not in allowed:
            raise AuthenticationError("client_not_allowed", kid=kid, issuer=issuer)
        names = _role_names(claims.get("realm_access"))
        resource_access = claims.get("resource_access")
        if self._settings.client_id is not None and isinstance(resource_access, Mapping):
            names |= _role_names(resource_access.get(self._settings.client_id))
        roles = frozenset(self._roles[name] for name in names if name in self._roles)
        return Principal(
            owner=owner, roles=roles, client_id=client if isinstance(client, str) else None
        )
