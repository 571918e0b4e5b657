from pathlib import Path

import pytest
from pydantic import ValidationError

from services.core.settings import Environment, Settings


def test_defaults_are_the_embedded_dev_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("RAYSCRIBE_"):
            monkeypatch.delenv(name)
    settings = Settings(_env_file=None)
    assert settings.env is Environment.DEV
    assert settings.whisper.model == "tiny.en"
    assert settings.server.max_upload_bytes == 25 * 1024 * 1024
    assert settings.server.sync_max_duration_s == 600


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYSCRIBE_WHISPER__MODEL", "base")
    monkeypatch.setenv("RAYSCRIBE_WHISPER__CPU_THREADS", "4")
    monkeypatch.setenv("RAYSCRIBE_SERVER__SYNC_MAX_DURATION_S", "30")
    settings = Settings(_env_file=None)
    assert settings.whisper.model == "base"
    assert settings.whisper.cpu_threads == 4
    assert settings.server.sync_max_duration_s == 30


def test_wrong_type_is_refused_with_the_field_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYSCRIBE_WHISPER__CPU_THREADS", "many")
    with pytest.raises(ValidationError, match="cpu_threads"):
        Settings(_env_file=None)


def test_outside_dev_a_public_bind_without_auth_is_refused() -> None:
    """Twice over: the settings refuse `AUTH__MODE=off` outside dev, and the bind guard
    (services/limits/bind.py, tested in test_limits) refuses a public bind without it."""
    with pytest.raises(ValidationError, match="invalid auth settings"):
        Settings(
            _env_file=None,
            env="prod",
            data_dir=Path("/srv/rayscribe"),
            database={"url": "postgresql+asyncpg://rayscribe@db/rayscribe"},
            server={"host": "0.0.0.0"},
            auth={"mode": "off"},
        )


def test_outside_dev_relative_paths_are_refused() -> None:
    with pytest.raises(ValidationError, match="data_dir must be an absolute path"):
        Settings(_env_file=None, env="uat", data_dir=Path("relative/dir"))


def test_outside_dev_safe_values_pass() -> None:
    settings = Settings(
        _env_file=None,
        env="prod",
        data_dir=Path("/srv/rayscribe"),
        database={"url": "postgresql+asyncpg://rayscribe@db/rayscribe"},
        auth={"issuer": "https://sso.example.com/realms/acme", "audience": "rayscribe-api"},
    )
    assert settings.model_cache_dir == Path("/srv/rayscribe/models")


def test_outside_dev_sqlite_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"database\.url must be set"):
        Settings(_env_file=None, env="prod", data_dir=Path("/srv/rayscribe"))


def test_dev_defaults_to_sqlite_under_an_absolute_data_dir() -> None:
    settings = Settings(_env_file=None, data_dir=Path("relative"))
    assert settings.data_dir.is_absolute()
    assert settings.database_url == f"sqlite+aiosqlite:///{settings.data_dir / 'rayscribe.db'}"


def test_dev_allows_a_public_bind_for_local_experiments() -> None:
    assert Settings(_env_file=None, server={"host": "0.0.0.0"}).server.host == "0.0.0.0"


def test_every_field_is_documented() -> None:
    def walk(model: type) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            if not field.description:
                missing.append(name)
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                missing += [f"{name}.{sub}" for sub in walk(annotation)]
        return missing

    assert walk(Settings) == []
