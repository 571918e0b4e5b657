"""The HTTP ingress deployment: builds the replica's resources, then serves the FastAPI app.

Resources are built in the constructor (Serve does not honour FastAPI lifespan state
reliably), and `__serve_build_asgi_app__` hands Serve the app built around them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.api import create_app
from deployments.dependencies import build_container
from deployments.transcriber import ServeTranscriber
from services.core.logging import configure_logging
from services.core.settings import Settings
from services.transcription.model_files import served_model_id


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(self, transcriber: DeploymentHandle[Any], settings: Settings) -> None:
        configure_logging(settings.logging.level)
        self._container = build_container(
            settings, ServeTranscriber(transcriber), served_model_id(settings)
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._container)
