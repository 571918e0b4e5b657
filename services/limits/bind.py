"""The public-bind guard: is the address Serve's HTTP proxy binds reachable from outside,
and may it be with the authentication mode in force?

The bind is decided in one place, `bind_host`: `RAYSCRIBE_SERVER__HOST` when it is set,
otherwise the `http_options.host` of the serve config being deployed (Serve's own default,
127.0.0.1, when that has none). The launcher (deployments/serve_launch.py) writes the
decided host into the config it hands to Serve, so the guard judges what really binds.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from services.core.settings import Environment, Settings

SERVE_DEFAULT_HOST = "127.0.0.1"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class PublicBindRefusedError(RuntimeError):
    pass


def bind_host(serve_config: dict[str, Any], settings: Settings) -> str:
    if "host" in settings.server.model_fields_set:
        return settings.server.host
    http_options = serve_config.get("http_options") or {}
    return str(http_options.get("host") or SERVE_DEFAULT_HOST)


def is_public(host: str) -> bool:
    """Anything but a loopback address can be reached from another machine."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return False
    try:
        return not ipaddress.ip_address(name).is_loopback
    except ValueError:
        return True  # a host name: it resolves to whatever the network says


def auth_mode(settings: Settings) -> str:
    """`settings.auth.mode` when the authentication settings exist; `off` before they do
    (read defensively: on a branch without them, nothing authenticates)."""
    mode = getattr(getattr(settings, "auth", None), "mode", None)
    return "off" if mode is None else str(getattr(mode, "value", mode))


def check_bind(host: str, settings: Settings) -> str | None:
    """Raise when a public bind would serve without authentication outside dev; in dev
    return the loud warning to print (None when there is nothing to say)."""
    if not is_public(host) or auth_mode(settings) != "off":
        return None
    message = (
        f"Serve would bind {host!r}, reachable from other machines, with authentication off "
        "(RAYSCRIBE_AUTH__MODE=off): anyone who reaches the port can transcribe, read and "
        "delete every job."
    )
    if settings.env is not Environment.DEV:
        raise PublicBindRefusedError(
            f"{message} Refused in env={settings.env.value}: turn authentication on, or bind "
            "127.0.0.1 (RAYSCRIBE_SERVER__HOST) behind an authenticating proxy."
        )
    return f"WARNING: {message} Allowed only because RAYSCRIBE_ENV=dev."
