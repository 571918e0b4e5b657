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


def resolve(config_path: Path, settings: Settings) -> tuple[dict[str, Any], str]:
    """The config with the decided host, and that host; raises when the guard refuses."""
    config: dict[str, Any] = yaml.safe_load(config_path.read_text()) or {}
    host = bind_host(config, settings)
    warning = check_bind(host, settings)
    if warning is not None:
        banner = "!" * 78
        print(f"{banner}\n{warning}\n{banner}", file=sys.stderr, flush=True)
    config.setdefault("http_options", {})["host"] = host
    return stamp(config), host


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in COMMANDS:
        print(
            f"usage: serve_launch {{{'|'.join(COMMANDS)}}} CONFIG [serve options]", file=sys.stderr
        )
        return 2
    command, config_path, rest = argv[0], Path(argv[1]), argv[2:]
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
