"""Changing the running test apps' Serve config for the length of one test."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator

from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from tests import serve_local as local


@contextlib.contextmanager
def whisper_queue_limit(limit: int) -> Iterator[None]:
    """Redeploy the running apps with the Whisper deployment's per-caller queue at `limit`.

    A lightweight update (no replica restarts); the original config is restored after.
    """
    client = _get_global_client()
    details = client.get_serve_details()
    original = {
        "http_options": details["http_options"],
        "proxy_location": details["proxy_location"],
        "applications": [app["deployed_app_config"] for app in details["applications"].values()],
    }
    lowered = copy.deepcopy(original)
    for app in lowered["applications"]:
        if app["name"] == local.APP_NAME:
            for deployment in app["deployments"]:
                if deployment["name"] == "WhisperTranscriber":
                    deployment["max_queued_requests"] = limit
    try:
        client.deploy_apps(ServeDeploySchema.model_validate(lowered), _blocking=False)
        local.wait_until_running(local.APP_NAME)
        time.sleep(3)  # callers' routers learn the new limit by long poll
        yield
    finally:
        client.deploy_apps(ServeDeploySchema.model_validate(original), _blocking=False)
        local.wait_until_running(local.APP_NAME)
