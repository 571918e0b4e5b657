"""A Ray head started the way ops start one: `ray start --head` with the dashboard, token
authentication and free ports, in a temp dir of its own; the app deployed onto it with
`serve deploy` through the dashboard's REST API, carrying the token.

Nothing of the machine's other Ray clusters is touched: every port is picked free, the
token lives in the head's own directory (`RAY_AUTH_TOKEN_PATH`, never `~/.ray`), and the
stop kills only the processes that carry this head's token path in their environment
(Ray's workers leave the head's process group, so the group alone is not enough).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.serve_local import ROOT, free_port

VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 180


@dataclass
class RayHead:
    num_cpus: int = 2
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rsm-", dir="/tmp")))
    ports: dict[str, int] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    process: subprocess.Popen[bytes] | None = None
    keep_logs: bool = False
    """Leave the head's directory (logs) behind, e.g. after a failed start."""

    @property
    def token_path(self) -> Path:
        return self.dir / "auth_token"

    @property
    def temp_dir(self) -> Path:
        return self.dir / "ray"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard']}"

    @property
    def service_discovery_file(self) -> Path:
        """Written by the dashboard head: every node's metrics export, for Prometheus."""
        return self.temp_dir / "prom_metrics_service_discovery.json"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_path),
            PYTHONPATH=str(ROOT),
            PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
            RAY_USAGE_STATS_ENABLED="0",
        )
        env.pop("RAY_AUTH_TOKEN", None)
        env.pop("RAY_ADDRESS", None)
        return env

    def start(self, attempts: int = 3) -> None:
        """Start the head; a start that fails (the node did not register within Ray's 30 s
        on a loaded machine, or a picked port was taken meanwhile) is retried on new ports."""
        for attempt in range(1, attempts + 1):
            try:
                self._start()
                return
            except RuntimeError:
                self.stop(keep_dir=True)
                if attempt == attempts:
                    raise

    def _start(self) -> None:
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)
        names = ("gcs", "dashboard", "metrics", "client", "agent_http", "agent_grpc", "renv", "nm")
        self.ports = {name: free_port() for name in names}
        workers = free_port()
        command = [
            str(VENV_BIN / "ray"), "start", "--head", "--block",
            f"--num-cpus={self.num_cpus}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
            f"--port={self.ports['gcs']}", f"--dashboard-port={self.ports['dashboard']}",
            f"--metrics-export-port={self.ports['metrics']}",
            f"--ray-client-server-port={self.ports['client']}",
            f"--dashboard-agent-listen-port={self.ports['agent_http']}",
            f"--dashboard-agent-grpc-port={self.ports['agent_grpc']}",
            f"--runtime-env-agent-port={self.ports['renv']}",
            f"--node-manager-port={self.ports['nm']}",
            f"--min-worker-port={workers}", f"--max-worker-port={workers + 200}",
        ]  # fmt: skip
        log = (self.dir / "ray-start.log").open("wb")
        self.process = subprocess.Popen(
            command, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.log_tail()}")
            # The dashboard answers before the node has registered: wait for both (on a
            # loaded machine `ray start` gives up after 30 s of registering, and exits).
            if "Ray runtime started" in self.log_tail(200):
                try:
                    if httpx.get(f"{self.dashboard_url}/api/gcs_healthz", timeout=5).is_success:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(1)
        raise TimeoutError("the Ray head's dashboard never answered")

    def serve_cli(self, *args: str, timeout_s: float = 300) -> str:
        done = subprocess.run(
            [str(VENV_BIN / "serve"), *args, "-a", self.dashboard_url],
            env=self.env(), capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            head = self.process is not None and self.process.poll()
            died = f"; the head exited ({head}): {self.log_tail()}" if head is not None else ""
            raise RuntimeError(f"serve {args[0]} failed: {done.stdout}\n{done.stderr}{died}")
        return done.stdout

    def deploy(self, config: dict[str, Any]) -> None:
        path = self.dir / "serve_config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.serve_cli("deploy", str(path))

    def applications(self) -> dict[str, Any]:
        """Serve's view through the dashboard's REST API (what the Serve page shows)."""
        answer = httpx.get(
            f"{self.dashboard_url}/api/serve/applications/", headers=self.headers, timeout=30
        )
        answer.raise_for_status()
        apps: dict[str, Any] = answer.json().get("applications", {})
        return apps

    def wait_running(self, app: str, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        status = None
        while time.monotonic() < deadline:
            try:
                status = self.applications().get(app, {}).get("status")
            except httpx.HTTPError as exc:
                status = repr(exc)
            if status == "RUNNING":
                return
            if status == "DEPLOY_FAILED":
                raise RuntimeError(json.dumps(self.applications()[app], indent=1)[:4000])
            time.sleep(2)
        raise TimeoutError(f"{app} is not running after {timeout_s} s ({status})")

    def log_tail(self, lines: int = 30) -> str:
        path = self.dir / "ray-start.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def stop(self, keep_dir: bool = False) -> None:
        """Every process of this head (a test cluster: nothing in it needs a clean stop)."""
        if self.process is None:
            return
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
        for pid in self._processes():
            _kill(pid)
        if not (self.keep_logs or keep_dir):
            shutil.rmtree(self.dir, ignore_errors=True)
        self.process = None

    def _processes(self) -> list[int]:
        """Every process whose environment names this head's token file (ours only)."""
        marker = f"RAY_AUTH_TOKEN_PATH={self.token_path}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
