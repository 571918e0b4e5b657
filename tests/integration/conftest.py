"""One real Serve instance per test session, deployed from serve_config.yaml on a local Ray.

It is deployed the way `serve run serve_config.yaml` deploys it, with changes for tests
only: a free HTTP port; the main app on PostgreSQL and Redis (the machine's shared servers,
a database and a Redis db of its own) with the result cache off; and a second copy of the
application at `/multi` serving two models at once, `tiny.en` (the default) and the
multilingual `base`, each in a Whisper deployment of its own, on the embedded defaults
(SQLite, no Redis), with token CPU shares so everything fits the 2-CPU budget. Speaker
labels (`diarized_json`) are enabled on the main app only, its `SpeakerDiarizer` with no
config entry (the code's defaults, as `make run` with the setting gets them); the `/multi`
app answers them 400 `diarization_unavailable`.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from services.migrations import upgrade
from tests import serve_local as local
from tests.servers import create_database, drop_database

MULTI_APP_NAME = "rayscribe-multi"
MULTI_PREFIX = "/multi"
MULTI_MODELS = ["tiny.en", "base"]
"""Served by the second app; the first is the default (`whisper-1`)."""
BASE_DEPLOYMENT = "WhisperTranscriber_base"
BASE_MAX_QUEUED = 96
"""Set on base's deployment by its own config entry (by name), so a test can see it applied."""


def _add_multi_app(config: dict[str, Any], data_dir: str) -> None:
    """The same application serving tiny.en and base, on the embedded defaults (SQLite, no
    Redis). base's deployment is configured by an entry of its own, named as the README
    says (`WhisperTranscriber_base`), copied from the default model's entry."""
    multi = copy.deepcopy(config["applications"][0])
    multi.update(name=MULTI_APP_NAME, route_prefix=MULTI_PREFIX)
    multi["args"]["settings"] = {
        "data_dir": data_dir,
        "whisper": {"model": MULTI_MODELS[0], "models": MULTI_MODELS},
        "jobs": {"poll_interval_s": 0.5, "retry_backoff_s": 0.2},
    }
    (whisper,) = [d for d in multi["deployments"] if d["name"] == "WhisperTranscriber"]
    base = copy.deepcopy(whisper)
    base.update(name=BASE_DEPLOYMENT, max_queued_requests=BASE_MAX_QUEUED)
    multi["deployments"].append(base)
    for deployment in multi["deployments"]:
        deployment["ray_actor_options"]["num_cpus"] = 0
    config["applications"].append(multi)


SERVE_REDIS = f"redis://127.0.0.1:6379/{os.environ.get('RAYSCRIBE_TEST_SERVE_REDIS_DB', '6')}"


@pytest.fixture(scope="session")
def serve_database() -> Iterator[str]:
    """The main app's jobs live in a fresh PostgreSQL database, migrated before deploying."""
    name, url = asyncio.run(create_database())
    upgrade(url)
    yield url
    asyncio.run(drop_database(name))


@pytest.fixture(scope="session")
def serve_url(tmp_path_factory: pytest.TempPathFactory, serve_database: str) -> Iterator[str]:
    client = redis.Redis.from_url(SERVE_REDIS, socket_timeout=2)
    client.flushdb()  # database 6 belongs to this tier
    client.close()
    multi_dir = tmp_path_factory.mktemp("serve-multi")
    upgrade(f"sqlite+aiosqlite:///{multi_dir / 'rayscribe.db'}")
    settings = {
        "data_dir": str(tmp_path_factory.mktemp("serve-data")),
        "database": {"url": serve_database},
        "redis": {"url": SERVE_REDIS},
        "cache": {"enabled": False},
        "diarization": {"enabled": True},
        # Slow uploads in test_capacity are cut off after 10 s instead of 30.
        "server": {"slow_body_window_s": 10.0},
        "jobs": {
            "poll_interval_s": 0.5,
            "retry_backoff_s": 0.2,
            "max_concurrent": 4,
            "lease_s": 10,
            # Long jobs cut every 2 minutes, not 5: test_long_jobs needs three chunks.
            "chunk_s": 120.0,
        },
    }

    def edit(config: dict[str, Any]) -> None:
        _add_multi_app(config, str(multi_dir))

    config = local.load_config(port=local.free_port(), settings=settings, edit=edit)
    try:
        yield local.deploy(config, num_cpus=2)
    finally:
        local.shutdown()


@pytest.fixture(scope="session")
def http(serve_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def multi_http(serve_url: str) -> Iterator[httpx.Client]:
    """The same app serving tiny.en (the default) and the multilingual base model."""
    with httpx.Client(base_url=serve_url + MULTI_PREFIX, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def transcriber_stats(serve_url: str) -> Any:
    """Reads the Whisper replica's counters (batches, items, windows) through a handle."""
    from ray import serve

    handle = serve.get_deployment_handle("WhisperTranscriber", app_name=local.APP_NAME)
    return lambda: handle.stats.remote().result(timeout_s=30)
