"""The application builder: `import_path: deployments.app:build_app` in serve_config.yaml.

Topology (replicas, CPUs, batching) lives in serve_config.yaml; behaviour comes from
`Settings`, read from the environment once here so a bad value fails before anything starts.

Versions. Serve decides whether a redeploy restarts replicas from the config alone: the
application's code version is a hash of its `import_path`, `runtime_env` and `args`
(`get_app_code_version`), computed by the controller before it runs this builder; when it
is unchanged Serve does not even call the builder again, and code edited on disk or a
changed `RAYSCRIBE_*` variable goes unnoticed. So the digest of the code and settings must
be in the config Serve receives: `stamp()` (`python -m deployments.app`, used by
`make run` and the tests) writes it into each application's `args.release`. A new digest
is a new code version: Serve rolls every deployment of the app (new replicas start, old
ones stop gracefully). `build_app` computes the digest again where the app is built and
logs a warning when the config's differs (it was not stamped, or the cluster runs other
code than the deploying side).
"""

# No `from __future__ import annotations` here: Serve reads the builder's annotation at run
# time to validate `args` against AppArgs, and a string annotation would skip that.
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, SecretStr
from ray.serve import Application

from cluster.job_tracker import JobTracker
from deployments.diarizer import SpeakerDiarizer
from deployments.ingress import Ingress
from deployments.transcriber import WhisperTranscriber, deployment_name
from services.core.logging import get_logger
from services.core.settings import Settings
from services.transcription.models import ServedModels

log = get_logger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ("services", "cluster", "deployments")
"""The packages whose code the digest covers (what the replicas import)."""
IMPORT_PATH = "deployments.app:build_app"


class AppArgs(BaseModel):
    """The `args:` of the application in serve_config.yaml."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = {}
    """Overrides applied on top of the `RAYSCRIBE_*` environment (nested like the settings)."""

    release: str = ""
    """Digest of the code and settings, written by `stamp()`; a new one makes Serve roll
    every replica of the app. Empty: not stamped (edits on disk then need a new config)."""


def _reveal(value: Any) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


def release_digest(settings: Settings, root: Path = ROOT) -> str:
    """Changes whenever the code under `SOURCE_ROOTS` or the resolved settings change."""
    # Secrets count too (a new database password must roll the replicas); only the
    # digest leaves this function, never the values.
    values = json.dumps(settings.model_dump(), default=_reveal, sort_keys=True)
    digest = hashlib.sha256(values.encode())
    for package in SOURCE_ROOTS:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def stamp(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a parsed serve_config.yaml) with `args.release` set for each of our apps.

    The settings are resolved here, from `args.settings` and this process's `RAYSCRIBE_*`
    environment: what the replicas see when Serve runs where it is deployed from (`serve
    run`). On a remote cluster, set variables through the config's `runtime_env` (Serve
    versions those itself) or `args.settings`.
    """
    for app in config.get("applications", []):
        if app.get("import_path") != IMPORT_PATH:
            continue
        args = app.setdefault("args", {}) or {}
        app["args"] = args
        args["release"] = release_digest(Settings(**args.get("settings", {})))
    return config


def build_app(args: AppArgs) -> Application:
    settings = Settings(**args.settings)
    release = release_digest(settings)
    if args.release != release:
        log.warning("release_digest_differs", stamped=args.release or None, built=release)
    models = ServedModels.from_settings(settings)
    transcribers = {model.id: whisper_deployment(settings, models, model.id) for model in models}
    # Speaker labels: a CPU deployment of its own, built only when enabled (it needs the
    # `rayscribe[diarization]` extra); without it diarized_json answers 400. The ingress
    # (synchronous requests) and the tracker (diarized jobs) share it.
    # `@serve.deployment` turns the classes into Deployments; its typing does not say so.
    diarizer = (
        SpeakerDiarizer.bind(settings)  # type: ignore[attr-defined]
        if settings.diarization.enabled
        else None
    )
    tracker = JobTracker.bind(  # type: ignore[attr-defined]
        transcribers, settings, release, diarizer
    )
    app: Application = Ingress.bind(  # type: ignore[attr-defined]
        transcribers, tracker, settings, diarizer
    )
    return app


def whisper_deployment(settings: Settings, models: ServedModels, model_id: str) -> Application:
    """One served model's Whisper deployment: its own replicas, batch queue and autoscaling.

    Named by `deployment_name` (the default model's is `WhisperTranscriber`, so a
    single-model config is unchanged; the others' `WhisperTranscriber_<id>`), which is the
    name a serve_config.yaml entry uses to configure it. Without an entry a model's
    deployment gets the class's defaults, those of the shipped `WhisperTranscriber` entry,
    with OpenMP's threads set to `whisper.cpu_threads`.
    """
    model = models.resolve(model_id)
    options: dict[str, Any] = {"name": deployment_name(model)}
    if not model.default:
        threads = str(settings.whisper.cpu_threads)
        options["ray_actor_options"] = {
            "num_cpus": 1.5,
            "num_gpus": 0,
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": threads}},
        }
    deployment = WhisperTranscriber.options(**options)  # type: ignore[attr-defined]
    bound: Application = deployment.bind(models.settings_for(settings, model_id))
    return bound


def main(argv: list[str]) -> None:
    """`python -m deployments.app [serve_config.yaml]`: print the config, stamped."""
    path = Path(argv[0]) if argv else ROOT / "serve_config.yaml"
    config = yaml.safe_load(path.read_text())
    sys.stdout.write(yaml.safe_dump(stamp(config), sort_keys=False))


if __name__ == "__main__":
    main(sys.argv[1:])
