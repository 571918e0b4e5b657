"""Auth tests: the real app (PostgreSQL, Redis, tiny.en in-process) behind a local IdP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.core.auth_settings import AuthMode, AuthSettings
from tests.idp import API_CLIENT, LocalIdP
from tests.jobs.conftest import (  # noqa: F401  (fixtures, registered by import)
    JobsEnv,
    _reset,
    build_env,
    close_env,
    local_transcriber,
    make_settings,
    shared_postgres,
    shared_redis,
)


@pytest.fixture(scope="session")
def idp() -> Iterator[LocalIdP]:
    provider = LocalIdP()
    provider.add_key("RSA")
    provider.add_key("EC")
    provider.start()
    yield provider
    provider.stop()


def auth_settings(idp: LocalIdP, **overrides: Any) -> AuthSettings:
    """jwt mode against the local IdP, keys found by OpenID discovery from the issuer."""
    values: dict[str, Any] = {
        "mode": AuthMode.JWT,
        "issuer": idp.issuer,
        "audience": API_CLIENT,
        "client_id": API_CLIENT,
        "open_docs": False,
        **overrides,
    }
    return AuthSettings(**values)


EnvFactory = Callable[..., Awaitable[JobsEnv]]


@pytest.fixture
async def auth_env(
    tmp_path: Path,
    idp: LocalIdP,
    shared_postgres: str,  # noqa: F811
    shared_redis: str,  # noqa: F811
    local_transcriber: Any,  # noqa: F811
) -> AsyncIterator[EnvFactory]:
    """Builds the app on PostgreSQL + Redis with `auth_settings(idp, **overrides)`."""
    made: list[JobsEnv] = []

    async def make(**overrides: Any) -> JobsEnv:
        base = make_settings(tmp_path, "postgres", shared_postgres, shared_redis)
        settings = base.model_copy(update={"auth": auth_settings(idp, **overrides)})
        await _reset(settings, "postgres", shared_redis)
        env = await build_env(settings, local_transcriber, "postgres")
        made.append(env)
        return env

    yield make
    for env in made:
        await close_env(env)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
