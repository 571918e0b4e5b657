"""Changing the running test apps' Serve config, and watching the job tracker's replicas."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from typing import Any, cast

import ray
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from tests import serve_local as local


@contextlib.contextmanager
def whisper_queue_limit(limit: int) -> Iterator[None]:
    """Redeploy the running apps with the Whisper deployment's per-caller queue at `limit`.

    A lightweight update (no replica restarts); the original config is restored after.
    """
    original = deployed_config()
    lowered = copy.deepcopy(original)
    deployment_entry(lowered, "WhisperTranscriber")["max_queued_requests"] = limit
    try:
        redeploy(lowered)
        local.wait_until_running(local.APP_NAME)
        time.sleep(3)  # callers' routers learn the new limit by long poll
        yield
    finally:
        redeploy(original)
        local.wait_until_running(local.APP_NAME)


# -- the job tracker deployment --------------------------------------------------------

TRACKER = "JobTracker"


def deployed_config() -> dict[str, Any]:
    """The config the running apps were deployed with, as `serve deploy` would take it."""
    details = _get_global_client().get_serve_details()
    return {
        "http_options": details["http_options"],
        "proxy_location": details["proxy_location"],
        "applications": [app["deployed_app_config"] for app in details["applications"].values()],
    }


def redeploy(config: dict[str, Any]) -> None:
    """Deploy `config` over the running apps (what `serve deploy` does), without waiting."""
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)


def main_app(config: dict[str, Any]) -> dict[str, Any]:
    (app,) = [a for a in config["applications"] if a["name"] == local.APP_NAME]
    return cast(dict[str, Any], app)


def deployment_entry(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The main app's entry for deployment `name` in `config` (edit it, then `redeploy`)."""
    (entry,) = [d for d in main_app(config)["deployments"] if d["name"] == name]
    return cast(dict[str, Any], entry)


def tracker_entry(config: dict[str, Any]) -> dict[str, Any]:
    return deployment_entry(config, TRACKER)


def tracker_replicas(app_name: str = local.APP_NAME) -> set[str]:
    """The names of the tracker's replica actors alive now (running or stopping)."""
    return {
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if f"{app_name}#{TRACKER}#" in actor["name"]
    }


def tracker_statuses(app_name: str = local.APP_NAME) -> list[dict[str, Any]]:
    """`status()` of every running tracker replica."""
    handle = serve.get_deployment_handle(TRACKER, app_name=app_name)
    return list(handle.broadcast("status").results(timeout_s=30))


def wait_for_new_trackers(
    old: set[str], count: int = 1, timeout_s: float = 120
) -> list[dict[str, Any]]:
    """Until `count` tracker replicas run, none of them in `old`, all started; their status."""
    deadline = time.monotonic() + timeout_s
    seen: Any = None
    while time.monotonic() < deadline:
        replicas = tracker_replicas()
        if len(replicas) == count and not replicas & old:
            try:
                seen = tracker_statuses()
            except Exception as exc:  # a replica still starting or stopping
                seen = exc
            else:
                if len(seen) == count and all(s["started"] and s["loop_alive"] for s in seen):
                    return cast(list[dict[str, Any]], seen)
        time.sleep(0.5)
    raise AssertionError(f"no {count} new tracker replicas after {timeout_s} s: {seen}")
