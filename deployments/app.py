"""The application builder: `import_path: deployments.app:build_app` in serve_config.yaml.

Topology (replicas, CPUs, batching) lives in serve_config.yaml; behaviour comes from
`Settings`, read from the environment once here so a bad value fails before anything starts.
"""

# No `from __future__ import annotations` here: Serve reads the builder's annotation at run
# time to validate `args` against AppArgs, and a string annotation would skip that.
from typing import Any

from pydantic import BaseModel, ConfigDict
from ray.serve import Application

from deployments.ingress import Ingress
from deployments.transcriber import WhisperTranscriber
from services.core.settings import Settings


class AppArgs(BaseModel):
    """The `args:` of the application in serve_config.yaml."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = {}
    """Overrides applied on top of the `RAYSCRIBE_*` environment (nested like the settings)."""


def build_app(args: AppArgs) -> Application:
    settings = Settings(**args.settings)
    # `@serve.deployment` turns the classes into Deployments; its typing does not say so.
    transcriber = WhisperTranscriber.bind(settings)  # type: ignore[attr-defined]
    app: Application = Ingress.bind(transcriber, settings)  # type: ignore[attr-defined]
    return app
