"""Authentication at the HTTP edge: who the caller is, before any body is read.

`AuthMiddleware` verifies the bearer token of every request except the probes (and the
docs and model list when the settings keep them open) and answers 401 itself, so an
unauthenticated upload is refused before a byte of it is read. Routes then take the
caller from `current_principal` (`PrincipalDep`) and declare a role with `require(...)`;
`RoleMiddleware` answers 403 for a caller without it, also before the body is read.
With `auth.mode=off` (dev only) every caller is the anonymous one, which holds every role.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, NoReturn
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.errors import error_response
from services.auth.errors import AuthenticationError, PermissionDeniedError
from services.auth.keys import Fetch, HttpKeySource, KeyCache
from services.auth.principal import ANONYMOUS, Principal, Role
from services.auth.verifier import TokenVerifier
from services.core.auth_settings import AuthMode, AuthSettings
from services.core.errors import UnavailableError
from services.core.logging import get_logger

log = get_logger(__name__)

PROBE_PATHS = ("/healthz", "/readyz")
DOCS_PATHS = ("/docs", "/redoc", "/openapi.json", "/v1/models")
QUERY_TOKEN_PARAMS = frozenset({"access_token", "id_token", "token"})
NOBODY = Principal(owner=None)
"""The caller of an open path (probes, open docs) who sent no token: no roles."""


class Authenticator:
    """The replica's token verifier and the paths that need none."""

    def __init__(self, settings: AuthSettings, verifier: TokenVerifier | None) -> None:
        self.settings = settings
        self.verifier = verifier
        self.open_paths = PROBE_PATHS + (DOCS_PATHS if settings.open_docs else ())

    @property
    def enabled(self) -> bool:
        return self.verifier is not None

    def is_open(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.open_paths)

    async def authenticate(self, scope: Scope) -> Principal:
        """The caller of a request, or AuthenticationError (401) / UnavailableError (503)."""
        assert self.verifier is not None
        query = scope.get("query_string", b"").decode("latin-1")
        if any(name in QUERY_TOKEN_PARAMS for name, _ in parse_qsl(query)):
            raise AuthenticationError("token_in_query")
        values = [v for k, v in scope.get("headers", []) if k == b"authorization"]
        if not values:
            if self.is_open(route_path(scope)):
                return NOBODY
            raise AuthenticationError("no_token")
        scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
        if len(values) > 1 or scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("not_a_bearer_token")
        return await self.verifier.verify(token.strip())


def build_authenticator(settings: AuthSettings, *, fetch: Fetch | None = None) -> Authenticator:
    """`fetch` replaces the HTTP key source (tests); by default the JWKS URL or discovery."""
    if settings.mode is AuthMode.OFF:
        log.warning(
            "authentication_off",
            message="AUTH MODE IS OFF: every caller can use every endpoint and every job. "
            "Allowed in dev only; set RAYSCRIBE_AUTH__MODE=jwt before exposing this service.",
        )
        return Authenticator(settings, None)
    source = fetch or HttpKeySource(
        jwks_url=settings.jwks_url, issuer=settings.issuer, timeout_s=settings.jwks_timeout_s
    )
    keys = KeyCache(source, max_age_s=settings.jwks_max_age_s, cooldown_s=settings.jwks_cooldown_s)
    return Authenticator(settings, TokenVerifier(settings, keys))


def route_path(scope: Scope) -> str:
    """The path the app routes on: without the `root_path` Serve sets when the application
    has a route prefix (it keeps the prefix in `path`, as ASGI servers may)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def _client_of(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


class AuthMiddleware:
    """Puts the verified caller on `request.state.principal`, or answers 401/503 itself."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.authenticator.enabled:
            await self.app(scope, receive, send)
            return
        try:
            principal = await self.authenticator.authenticate(scope)
        except AuthenticationError as exc:
            log.warning(
                "auth_failed",
                reason=exc.reason,
                kid=exc.kid,
                issuer=exc.issuer,
                client=_client_of(scope),
                method=scope.get("method"),
                path=scope.get("path"),
            )
            await error_response(exc)(scope, receive, send)
            return
        except UnavailableError as exc:
            log.warning("auth_unavailable", error=exc.message, client=_client_of(scope))
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


_bearer = HTTPBearer(
    auto_error=False,
    description="An access token from the identity provider (Keycloak), with a role.",
)


def current_principal(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> Principal:
    """The caller; the `HTTPBearer` parameter only documents the scheme in OpenAPI."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is not None:
        return principal
    authenticator: Authenticator | None = getattr(request.app.state, "auth", None)
    if authenticator is None or not authenticator.enabled:
        return ANONYMOUS
    raise AuthenticationError("no_token")  # a path the middleware does not cover


PrincipalDep = Annotated[Principal, Depends(current_principal)]


class RoleCheck:
    """A dependency that lets through callers holding `role` (or admin); others get 403.
    Declared in a router's `dependencies`, `RoleMiddleware` also applies it before the body
    is read."""

    def __init__(self, role: Role) -> None:
        self.role = role

    def __call__(self, request: Request, principal: PrincipalDep) -> Principal:
        if not principal.has(self.role):
            _deny(self.role, request.client.host if request.client else None, request.url.path)
        return principal


def _deny(role: Role, client: str | None, path: str | None) -> NoReturn:
    log.warning("auth_failed", reason="missing_role", role=role.value, client=client, path=path)
    raise PermissionDeniedError(role.value)


def require(role: Role) -> RoleCheck:
    return RoleCheck(role)


def roles_by_prefix(routers: Sequence[APIRouter]) -> dict[str, list[Role]]:
    """The roles each router requires of every route it holds (its own `dependencies`),
    by its path prefix: what `RoleMiddleware` applies."""
    out: dict[str, list[Role]] = {}
    for router in routers:  # two routers under one prefix: a route needs both's roles
        roles = [
            d.dependency.role for d in router.dependencies if isinstance(d.dependency, RoleCheck)
        ]
        if roles:
            out.setdefault(router.prefix, []).extend(roles)
    return out


class RoleMiddleware:
    """403 for a caller without the role its route requires, before the body is read.

    FastAPI reads a form body before it resolves a route's dependencies, so a `RoleCheck`
    alone would let a caller without the role upload a whole file first. The roles are the
    routers' own (`roles_by_prefix`: a router that declares a role in its `dependencies`
    requires it of every route under its prefix), so one place says which role a route
    needs, and the dependency still runs behind this. Runs inside `AuthMiddleware`, which
    puts the caller on the scope; with authentication off there is no caller to check.
    """

    def __init__(self, app: ASGIApp, roles: dict[str, list[Role]]) -> None:
        self.app = app
        self.roles = roles

    def roles_for(self, path: str) -> list[Role]:
        """Every role the path needs: those of each prefix it lies under."""
        return [
            role
            for prefix, roles in self.roles.items()
            if path == prefix or path.startswith(prefix + "/")
            for role in roles
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("state", {}).get("principal") if scope["type"] == "http" else None
        if principal is not None:
            path = route_path(scope)
            missing = next((r for r in self.roles_for(path) if not principal.has(r)), None)
            if missing is not None:
                try:
                    _deny(missing, _client_of(scope), path)
                except PermissionDeniedError as exc:
                    await error_response(exc)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


require_transcriber = require(Role.TRANSCRIBER)
require_admin = require(Role.ADMIN)
require_bulk = require(Role.BULK)
TranscriberDep = Annotated[Principal, Depends(require_transcriber)]
"""A caller who may transcribe and use its own jobs."""
AdminDep = Annotated[Principal, Depends(require_admin)]
"""A caller who may see everyone's jobs and the operations endpoints."""
