"""`RoleMiddleware`: the role each router declares, applied before the body is read, also
under a Serve route prefix (`root_path`) and when two routers share a prefix."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from deployments.auth import RoleMiddleware, require, roles_by_prefix, route_path
from deployments.fastapi_app import ROUTERS
from services.auth.principal import Principal, Role

BULK_ONLY = Principal(owner="u", roles=frozenset({Role.BULK}))


async def _call(path: str, principal: Principal, *, root_path: str = "") -> tuple[int, bool]:
    """(status sent, whether the app behind was reached); the body is never offered."""
    reached = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal reached
        reached = True
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "root_path": root_path,
        "headers": [],
        "query_string": b"",
        "state": {"principal": principal},
    }
    await RoleMiddleware(app, roles_by_prefix(ROUTERS))(scope, receive, send)
    return sent[0]["status"], reached


async def test_each_router_prefix_needs_its_role_before_the_body() -> None:
    assert await _call("/v1/audio/transcriptions", BULK_ONLY) == (403, False)
    assert await _call("/v1/jobs", BULK_ONLY) == (403, False)
    assert await _call("/v1/jobs/abc/result", BULK_ONLY) == (403, False)
    assert await _call("/v1/batches", BULK_ONLY) == (200, True)
    assert await _call("/v1/jobsX", BULK_ONLY) == (200, True)  # another path: the router 404s
    assert await _call("/v1/models", BULK_ONLY) == (200, True)


async def test_under_a_route_prefix_the_role_is_still_checked_first() -> None:
    # Serve keeps an application's route prefix in `path` and names it in `root_path`.
    assert await _call("/api/v1/audio/transcriptions", BULK_ONLY, root_path="/api") == (
        403,
        False,
    )
    assert route_path({"path": "/api/readyz", "root_path": "/api"}) == "/readyz"
    assert route_path({"path": "/api", "root_path": "/api"}) == "/"
    assert route_path({"path": "/v1/jobs", "root_path": ""}) == "/v1/jobs"


def test_routers_sharing_a_prefix_need_every_role() -> None:
    one = APIRouter(prefix="/v1/x", dependencies=[Depends(require(Role.TRANSCRIBER))])
    two = APIRouter(prefix="/v1/x", dependencies=[Depends(require(Role.BULK))])
    assert roles_by_prefix([one, two]) == {"/v1/x": [Role.TRANSCRIBER, Role.BULK]}
