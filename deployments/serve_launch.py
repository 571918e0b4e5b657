"""Start Serve with the bind decided in one place and checked first:

    python -m deployments.serve_launch run serve_config.yaml [more `serve run` options]
    python -m deployments.serve_launch deploy serve_config.yaml
    python -m deployments.serve_launch check serve_config.yaml   # print the host, start nothing

The host comes from `services.limits.bind.bind_host` (RAYSCRIBE_SERVER__HOST, else the
config's `http_options.host`); the guard refuses a public bind without authentication
outside dev, and in dev prints a loud warning. The config Serve gets is the given one with
that host written in, so what was checked is what binds, and stamped with the release
digest (`deployments.app.stamp`), so a redeploy of changed code or settings rolls the
replicas. No Ray API is used here.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from deployments.app import stamp
from services.core.settings import Settings
from services.limits.bind import PublicBindRefusedError, bind_host, check_bind

COMMANDS = ("run", "deploy", "check")


USAGE = f"usage: serve_launch {{{'|'.join(COMMANDS)}}} CONFIG [serve options]"


class BadConfigError(ValueError):
    """The config file is missing, unreadable, not YAML, or not a mapping."""


def load_config(config_path: Path) -> dict[str, Any]:
    """The parsed config file; raises BadConfigError saying what is wrong with it."""
    try:
        text = config_path.read_text()
    except FileNotFoundError as exc:
        raise BadConfigError(f"config file not found: {config_path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise BadConfigError(f"cannot read config file {config_path}: {exc}") from exc
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise BadConfigError(f"config file {config_path} is not valid YAML{at}: {problem}") from exc
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise BadConfigError(
            f"config file {config_path} must be a mapping (a Serve config with "
            f"`applications:`), got a {type(config).__name__}"
        )
    return config


def resolve(config_path: Path, settings: Settings) -> tuple[dict[str, Any], str]:
    """The config with the decided host, and that host; raises when the guard refuses
    (PublicBindRefusedError) or the file is bad (BadConfigError)."""
    config = load_config(config_path)
    host = bind_host(config, settings)
    warning = check_bind(host, settings)
    if warning is not None:
        banner = "!" * 78
        print(f"{banner}\n{warning}\n{banner}", file=sys.stderr, flush=True)
    config.setdefault("http_options", {})["host"] = host
    return stamp(config), host


def main(argv: list[str]) -> int:
    """Exit codes: 2 for bad usage or a bad config file, 1 when the settings or the bind
    guard refuse; `run`/`deploy` replace this process with `serve`."""
    if not argv:
        print(f"missing command and config\n{USAGE}", file=sys.stderr)
        return 2
    if argv[0] not in COMMANDS:
        expected = ", ".join(COMMANDS)
        print(f"unknown command {argv[0]!r}: expected one of {expected}\n{USAGE}", file=sys.stderr)
        return 2
    if len(argv) < 2:
        print(f"missing config file after {argv[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    command, config_path, rest = argv[0], Path(argv[1]), argv[2:]
    try:
        load_config(config_path)  # before the settings: a bad file is the first thing to say
    except BadConfigError as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    try:
        settings = Settings()
    except ValidationError as exc:  # e.g. AUTH__MODE=off outside dev; never echo the values
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        print(f"refusing to start: invalid settings: {problems}", file=sys.stderr)
        return 1
    try:
        config, host = resolve(config_path, settings)
    except PublicBindRefusedError as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 1
    if command == "check":
        print(host)
        return 0
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", suffix=".yaml", prefix="serve_config.", dir=settings.data_dir, delete=False
    ) as resolved:
        yaml.safe_dump(config, resolved, sort_keys=False)
    os.execvpe("serve", ["serve", command, resolved.name, *rest], ray_environment(os.environ))


def ray_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Ray's token authentication on for the dashboard (127.0.0.1:8265) and the Jobs API,
    unless the caller chose otherwise; the token is `~/.ray/auth_token` (`ray get-auth-token`)."""
    return {"RAY_AUTH_MODE": "token", **environ}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
