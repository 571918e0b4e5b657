"""The settings a batch's Ray job runs with, passed in its runtime_env.

The job's driver writes progress to the same database as the service and charges the same
quotas, so it gets the service's sections (as JSON, one variable each; pydantic-settings
reads them back). The Ray token and the allow-list stay with the service: a job needs
neither. The values include secrets (the database URL): never log them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from services.core.settings import Settings

SECTIONS = ("database", "redis", "whisper", "storage", "limits", "auth", "logging", "cache")
KEPT_FROM_SERVICE = {"ray_token", "ray_address", "allowed_roots"}


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, BaseModel):
        return _plain(dict(value))
    return value


def job_env(settings: Settings) -> dict[str, str]:
    env = {
        "RAYSCRIBE_ENV": settings.env.value,
        "RAYSCRIBE_DATA_DIR": str(settings.data_dir),
    }
    for name in SECTIONS:
        env[f"RAYSCRIBE_{name.upper()}"] = json.dumps(_plain(getattr(settings, name)))
    bulk = {k: v for k, v in dict(settings.bulk).items() if k not in KEPT_FROM_SERVICE}
    env["RAYSCRIBE_BULK"] = json.dumps(_plain(bulk))
    if settings.bulk.code_dir:
        env["PYTHONPATH"] = settings.bulk.code_dir
    return env
