"""One real Serve instance per test session, deployed from serve_config.yaml on a local Ray.

It is deployed the way `serve run serve_config.yaml` deploys it, with changes for tests
only: a free HTTP port, a temporary data dir, and a second copy of the application at
`/base` running the multilingual `base` model (`RAYSCRIBE_WHISPER__MODEL=base`), with token
CPU shares so both fit the 2-CPU budget.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from deployments import local

BASE_APP_NAME = "rayscribe-base"
BASE_PREFIX = "/base"


def _add_base_app(config: dict[str, Any]) -> None:
    base = copy.deepcopy(config["applications"][0])
    base.update(name=BASE_APP_NAME, route_prefix=BASE_PREFIX)
    base["args"]["settings"]["whisper"] = {"model": "base"}
    for deployment in base["deployments"]:
        deployment["ray_actor_options"]["num_cpus"] = 0.01
    config["applications"].append(base)


@pytest.fixture(scope="session")
def serve_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = {"data_dir": str(tmp_path_factory.mktemp("serve-data"))}
    config = local.load_config(port=local.free_port(), settings=settings, edit=_add_base_app)
    try:
        yield local.deploy(config, num_cpus=2)
    finally:
        local.shutdown()


@pytest.fixture(scope="session")
def http(serve_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def base_http(serve_url: str) -> Iterator[httpx.Client]:
    """The same app serving the multilingual base model."""
    with httpx.Client(base_url=serve_url + BASE_PREFIX, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def transcriber_stats(serve_url: str) -> Any:
    """Reads the Whisper replica's counters (batches, items, windows) through a handle."""
    from ray import serve

    handle = serve.get_deployment_handle("WhisperTranscriber", app_name=local.APP_NAME)
    return lambda: handle.stats.remote().result(timeout_s=30)
