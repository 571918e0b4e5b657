"""The auth settings: off only in dev, jwt needs its realm, algorithms are asymmetric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.core.auth_settings import AuthMode
from services.core.settings import Settings

PROD: dict[str, Any] = {
    "_env_file": None,
    "env": "prod",
    "data_dir": Path("/srv/rayscribe"),
    "database": {"url": "postgresql+asyncpg://rayscribe@db/rayscribe"},
}
REALM = {"issuer": "https://sso.example.com/realms/acme", "audience": "rayscribe-api"}


def test_dev_defaults_to_off_with_open_docs() -> None:
    auth = Settings(_env_file=None).auth
    assert (auth.mode, auth.open_docs) == (AuthMode.OFF, True)


def test_outside_dev_the_default_is_jwt_with_docs_behind_a_token() -> None:
    auth = Settings(**PROD, auth=REALM).auth
    assert (auth.mode, auth.open_docs) == (AuthMode.JWT, False)


@pytest.mark.parametrize("env", ["uat", "prod"])
def test_off_is_refused_outside_dev(env: str) -> None:
    with pytest.raises(ValidationError, match=r"auth\.mode=off is allowed in dev only"):
        Settings(**{**PROD, "env": env}, auth={"mode": "off"})


def test_jwt_needs_issuer_and_audience() -> None:
    with pytest.raises(ValidationError, match=r"needs auth\.issuer.*needs auth\.audience"):
        Settings(**PROD)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYSCRIBE_AUTH__MODE", "jwt")
    monkeypatch.setenv("RAYSCRIBE_AUTH__ISSUER", REALM["issuer"])
    monkeypatch.setenv("RAYSCRIBE_AUTH__AUDIENCE", "rayscribe-api")
    monkeypatch.setenv("RAYSCRIBE_AUTH__CLIENT_ID", "rayscribe-api")
    monkeypatch.setenv("RAYSCRIBE_AUTH__ALGORITHMS", "RS256")
    monkeypatch.setenv("RAYSCRIBE_AUTH__ALLOWED_CLIENTS", "rayscribe-cli, rayscribe-web")
    auth = Settings(_env_file=None).auth
    assert auth.algorithms == ["RS256"]
    assert auth.allowed_clients == ["rayscribe-cli", "rayscribe-web"]
    assert auth.jwks_url is None  # discovered from the issuer


@pytest.mark.parametrize("algorithms", ["HS256", "none", "RS256,HS512", ""])
def test_only_asymmetric_algorithms(algorithms: str) -> None:
    with pytest.raises(ValidationError, match=r"auth\.algorithms"):
        Settings(_env_file=None, auth={"algorithms": algorithms})
