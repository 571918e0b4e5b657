"""One real Serve instance per test session, deployed from serve_config.yaml on a local Ray.

It is deployed the way `serve run serve_config.yaml` deploys it (the same schema and client
call), with changes for tests only: a free HTTP port, a temporary data dir, and a second
copy of the application at `/base` running the multilingual `base` model
(`RAYSCRIBE_WHISPER__MODEL=base`), with token CPU shares so both fit the 2-CPU budget.
"""

from __future__ import annotations

import copy
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "rayscribe"
BASE_APP_NAME = "rayscribe-base"
BASE_PREFIX = "/base"
DEPLOY_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def load_config(port: int, data_dir: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    (app,) = config["applications"]
    app["args"] = {"settings": {"data_dir": str(data_dir)}}
    base = copy.deepcopy(app)
    base.update(name=BASE_APP_NAME, route_prefix=BASE_PREFIX)
    base["args"]["settings"]["whisper"] = {"model": "base"}
    for deployment in base["deployments"]:
        deployment["ray_actor_options"]["num_cpus"] = 0.01
    config["applications"].append(base)
    return config


@pytest.fixture(scope="session")
def serve_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    port = _free_port()
    config = ServeDeploySchema.model_validate(
        load_config(port, tmp_path_factory.mktemp("serve-data"))
    )
    # Replicas import the project from the installed (editable) package; the budget mirrors
    # the 2-core machine the config is written for.
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=bool(os.environ.get("RAYSCRIBE_TEST_RAY_LOGS")),
        namespace="serve",
    )
    try:
        client = serve_api.serve_start(
            http_options=config.http_options.model_dump(), proxy_location=config.proxy_location
        )
        client.deploy_apps(config, _blocking=False)
        for name in (APP_NAME, BASE_APP_NAME):
            _wait_until_running(serve, name)
        url = f"http://127.0.0.1:{port}"
        _wait_until_ready(url)
        _wait_until_ready(url + BASE_PREFIX)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def _wait_until_running(serve: Any, name: str) -> None:
    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        app = serve.status().applications.get(name)
        status = app.status if app else None
        if status == "RUNNING":
            return
        if status == "DEPLOY_FAILED":
            raise RuntimeError(f"the Serve app {name} failed to deploy: {app.message}")
        time.sleep(1)
    raise TimeoutError(f"the Serve app {name} is not running after {DEPLOY_TIMEOUT_S} s ({status})")


def _wait_until_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the Serve app never became ready")


@pytest.fixture(scope="session")
def http(serve_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def base_http(serve_url: str) -> Iterator[httpx.Client]:
    """The same app serving the multilingual base model."""
    with httpx.Client(base_url=serve_url + BASE_PREFIX, timeout=120) as client:
        yield client
