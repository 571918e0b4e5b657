# ruff: noqa: E501  (one-line field docstrings feed the README settings table)
"""The `auth` section of the settings (`RAYSCRIBE_AUTH__*`): who may call, and how
tokens are verified. A module of its own so settings.py stays small; `Settings` resolves
the defaults that depend on the environment (`mode`, `open_docs`)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import NoDecode


class AuthMode(StrEnum):
    JWT = "jwt"
    OFF = "off"


SIGNING_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""Asymmetric algorithms a token may be signed with; HS* (a shared secret) and `none` never."""


def _comma_list(value: object) -> object:
    """`RS256,ES256` from the environment, or a JSON/Python list as it is."""
    if not isinstance(value, str):
        return value
    if value.lstrip().startswith("["):
        return json.loads(value)
    return [part.strip() for part in value.split(",") if part.strip()]


class AuthSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    mode: AuthMode | None = None
    """`jwt` (bearer tokens from an OpenID Connect provider such as Keycloak) or `off`; unset means `off` in dev and `jwt` elsewhere. `off` is refused outside dev."""

    issuer: str | None = None
    """The realm's issuer, exactly as tokens carry it in `iss`, e.g. https://sso.example.com/realms/acme."""

    jwks_url: str | None = None
    """Where the signing keys are published; unset means discovered from `<issuer>/.well-known/openid-configuration`."""

    audience: str | None = None
    """The value `aud` must contain (an audience mapper in the realm adds it); required in jwt mode."""

    client_id: str | None = None
    """The API's own client in the realm: its client roles (`resource_access[client_id].roles`) count."""

    algorithms: Annotated[list[str], NoDecode] = ["RS256", "ES256"]
    """Signature algorithms accepted, comma-separated; pinned here, never taken from the token."""

    allowed_clients: Annotated[list[str] | None, NoDecode] = None
    """Clients (`azp`) whose tokens are accepted, comma-separated; unset accepts any client of the realm."""

    leeway_s: float = Field(default=30.0, ge=0, le=120)
    """Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds."""

    jwks_max_age_s: float = Field(default=300.0, gt=0)
    """How long fetched signing keys are used before they are fetched again."""

    jwks_cooldown_s: float = Field(default=30.0, ge=0)
    """Least time between two fetches caused by an unknown `kid` (so random kids cannot flood the provider); a rotated key is picked up within it."""

    jwks_timeout_s: float = Field(default=5.0, gt=0)
    """Timeout of one fetch from the identity provider."""

    transcriber_role: str = "transcriber"
    """Role name (realm or client role) for the sync endpoints and one's own jobs."""

    bulk_role: str = "bulk"
    """Role name for batch work (bulk jobs, when they exist)."""

    admin_role: str = "admin"
    """Role name for everyone's jobs and the operations endpoints."""

    open_docs: bool | None = None
    """Serve /docs, /openapi.json and /v1/models without a token; unset means open in dev only."""

    _split_lists = field_validator("algorithms", "allowed_clients", mode="before")(_comma_list)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        unknown = [alg for alg in value if alg not in SIGNING_ALGORITHMS]
        if unknown or not value:
            raise ValueError(
                f"auth.algorithms must be some of {sorted(SIGNING_ALGORITHMS)}, got {value}"
            )
        return value

    def problems(self, env: str) -> list[str]:
        """What is wrong with this section in environment `env` (the mode resolved)."""
        if self.mode is AuthMode.OFF:
            if env != "dev":
                return [f"auth.mode=off is allowed in dev only, not in {env}"]
            return []
        missing = [name for name in ("issuer", "audience") if getattr(self, name) is None]
        return [f"auth.mode=jwt needs auth.{name}" for name in missing]
