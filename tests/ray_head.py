"""One `ray start --head` cluster for the whole test session, shared by the suites that need
a real head started the way ops start one (tests/ops, tests/batches, tests/bulk).

What each of them needs of it, all set here:
- dashboard on (the Jobs API, `serve deploy`, the Serve page) and Ray's token auth on, the
  token in a file of the head's own (`RAY_AUTH_TOKEN_PATH`, never `~/.ray`);
- every port a free one (never 6379 nor another cluster's default), a short private temp
  dir (Ray's socket paths must fit 107 bytes), 2 logical CPUs (the bulk test fills them);
- the environment its workers and job drivers inherit: this checkout on PYTHONPATH, the
  venv first on PATH, the S3 server's variables (Ray Data workers read S3 inputs), and the
  bulk tests' small parts and duration cap as one `RAYSCRIBE_BULK` value, which a batch's
  own `RAYSCRIBE_BULK` (in its runtime_env) replaces whole;
- the service-discovery file Prometheus reads to find every node's metrics export.

A loaded machine can make the raylet miss its wait for the dashboard agent (30 s inside
Ray): the head is given three minutes (`PATIENT_RAY`), and a start that still fails is
cleaned up and tried again on new ports. The head is stopped by its own processes only
(those carrying its token path in their environment or its temp dir on their command
line): never a blanket `ray stop`.

Suites share it, so each leaves it as it found it: the ops tests shut their Serve app
down, the bulk tests release the actor that holds the CPUs, jobs end or are stopped.
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 300
STOP_GRACE_S = 3
PATIENT_RAY = {"RAY_agent_register_timeout_ms": "180000", "RAY_raylet_start_wait_time_s": "180"}
"""The raylet waits 30 s for its agents (Python, slow to import on a machine loaded far past
its cores) and then aborts the node; test clusters give it three minutes."""

BULK_TEST_SETTINGS = {
    "max_duration_s": 120.0,
    "part_max_age_s": 0.5,
    "files_per_call": 4,
    "metrics_flush_s": 0.0,  # only the ops test waits for Prometheus to see a run's rows
}
"""What a bulk run submitted with `ray job submit` (whose driver gets the head's environment)
runs with: the corpus's duration cap, and small parts committed often."""


def job_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's) without Ray's and the app's own variables, with this
    checkout and the venv first: nothing of a developer's setup leaks into a test."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not k.startswith(("RAY_", "RAYSCRIBE_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


@dataclass
class RayHead:
    num_cpus: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)
    """Variables every worker and job driver of the head inherits (the S3 server's)."""
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rsh-", dir="/tmp")))
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    keep_logs: bool = False
    """Leave the head's directory (logs) behind, e.g. after a failed test."""
    failed_starts: list[str] = field(default_factory=list)
    """Why the attempts before the one that worked failed (empty on a quiet machine)."""

    @property
    def token_path(self) -> Path:
        return self.dir / "auth_token"

    @property
    def temp_dir(self) -> Path:
        return self.dir / "ray"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def dashboard_url(self) -> str:
        """The dashboard: the Jobs API, Serve's REST API and the web pages."""
        return f"http://127.0.0.1:{self.ports['dashboard']}"

    @property
    def gcs_address(self) -> str:
        """What a driver joins (`RAY_ADDRESS`)."""
        return f"127.0.0.1:{self.ports['gcs']}"

    @property
    def service_discovery_file(self) -> Path:
        """Written by the dashboard head: every node's metrics export, for Prometheus."""
        return self.temp_dir / "prom_metrics_service_discovery.json"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def head_env(self) -> dict[str, str]:
        """The environment of `ray start`, hence of every worker and job driver."""
        env = job_environment()
        env.update(self.extra_env)
        env.update(PATIENT_RAY)
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_path),
            RAY_USAGE_STATS_ENABLED="0",
            RAYSCRIBE_DATA_DIR=str(self.data_dir),
            RAYSCRIBE_BULK=json.dumps(BULK_TEST_SETTINGS),
        )
        return env

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """A client's environment (`ray job`, `serve`, a driver): `base` (default: the
        head's own) with the token file and this head's address."""
        env = dict(self.head_env() if base is None else base)
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_path),
            RAY_ADDRESS=self.gcs_address,
        )
        env.pop("RAY_AUTH_TOKEN", None)
        return env

    def start(self, attempts: int = 3) -> None:
        """Start the head; a start that fails (the node did not register in time, or a
        picked port was taken meanwhile) is cleaned up and retried on new ports."""
        for attempt in range(1, attempts + 1):
            try:
                self._start()
                return
            except (RuntimeError, TimeoutError) as exc:
                self.failed_starts.append(str(exc)[-2000:])
                self.stop(keep_dir=True)
                if attempt == attempts:
                    raise

    def _start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)
        names = ("gcs", "dashboard", "metrics", "client", "agent_http", "agent_grpc", "renv")
        self.ports = {name: free_port() for name in (*names, "nm", "om")}
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
            f"--object-manager-port={self.ports['om']}",
            f"--min-worker-port={workers}", f"--max-worker-port={workers + 200}",
        ]  # fmt: skip
        with self._log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=self.head_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.log_tail()}")
            # The dashboard answers before the node has registered, and the Jobs API only
            # once the dashboard's job module is up: wait for `ray start` and the Jobs API.
            if "will now block forever" in self.log_tail(400) and self._jobs_api_answers():
                return
            time.sleep(0.5)
        raise TimeoutError(f"the Ray head did not come up: {self.log_tail()}")

    def _jobs_api_answers(self) -> bool:
        try:
            url = f"{self.dashboard_url}/api/jobs/"
            return httpx.get(url, headers=self.headers, timeout=5).is_success
        except httpx.HTTPError:
            return False

    @property
    def _log_path(self) -> Path:
        return self.dir / "ray-start.log"

    def log_tail(self, lines: int = 30) -> str:
        path = self._log_path
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # Serve, as ops drive it: the `serve` CLI and the dashboard's REST API, with the token.

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

    def serve_shutdown(self) -> None:
        """Every Serve app, the controller and the proxies gone: their CPUs are free again."""
        self.serve_cli("shutdown", "--yes")

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
            time.sleep(1)
        raise TimeoutError(f"{app} is not running after {timeout_s} s ({status})")

    def stop(self, keep_dir: bool = False) -> None:
        """SIGTERM to every process of this head at once, SIGKILL to what is left after a
        few seconds. A test cluster needs no drain: SIGTERM to `ray start --block` alone
        drains the node for up to 30 s first (and its workers leave its process group)."""
        ours = set(self._processes())
        if self.process is not None:
            ours.add(self.process.pid)
            _signal_group(self.process.pid, signal.SIGTERM)
        _signal_all(ours, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(_alive(pid) for pid in ours):
            time.sleep(0.2)
        if self.process is not None:
            _signal_group(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            self.process = None
        _signal_all(ours | set(self._processes()), signal.SIGKILL)
        if not (self.keep_logs or keep_dir):
            shutil.rmtree(self.dir, ignore_errors=True)

    def _processes(self) -> list[int]:
        """Every process of this head: its token path in the environment (inherited by
        workers and job drivers) or its temp dir on the command line."""
        marker = f"RAY_AUTH_TOKEN_PATH={self.token_path}".encode()
        temp_dir = str(self.temp_dir).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if temp_dir in (entry / "cmdline").read_bytes() or marker in (
                    entry / "environ"
                ).read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"
