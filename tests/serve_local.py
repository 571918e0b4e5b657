"""Deploy serve_config.yaml on a local Ray from Python, as `serve run` does.

For the integration tests and the benchmarks, which need the real app and a driver
connected to the same cluster (to kill replicas, read their stats). It uses the same
schema validation and deploy call as the `serve run` CLI; `make run` uses the CLI itself.
"""

from __future__ import annotations

import copy
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "serve_config.yaml"
APP_NAME = "rayscribe"
DEPLOY_TIMEOUT_S = 600  # replicas of three Whisper deployments start slowly on a loaded machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def load_config(
    *,
    port: int,
    settings: dict[str, Any],
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """serve_config.yaml with another port and settings overrides for the application,
    stamped with the release digest (`deployments.app.stamp`)."""
    config: dict[str, Any] = yaml.safe_load(SERVE_CONFIG.read_text())
    config["http_options"]["port"] = port
    (app,) = config["applications"]
    app["args"] = {"settings": copy.deepcopy(settings)}
    from deployments.app import stamp

    if edit is not None:
        edit(config)
    return stamp(config)  # as `make run` does: a digest of the code and settings in the args


def deploy(config: dict[str, Any], *, num_cpus: int = 2) -> str:
    """Start Ray and Serve in this process, deploy every application, wait until ready."""
    import ray
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, namespace="serve")
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location
    )
    client.deploy_apps(schema, _blocking=False)
    url = f"http://127.0.0.1:{config['http_options']['port']}"
    for app in config["applications"]:
        wait_until_running(app["name"])
        wait_until_ready(url + app["route_prefix"].rstrip("/"))
    return url


def shutdown() -> None:
    import ray
    from ray import serve

    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()


def wait_until_running(name: str, timeout_s: float = DEPLOY_TIMEOUT_S) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        app = serve.status().applications.get(name)
        status = app.status if app else None
        if status == "RUNNING":
            return
        if app is not None and status == "DEPLOY_FAILED":
            raise RuntimeError(f"the Serve app {name} failed to deploy: {app.message}")
        time.sleep(1)
    raise TimeoutError(f"the Serve app {name} is not running after {timeout_s} s ({status})")


def wait_until_ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} never became ready")
