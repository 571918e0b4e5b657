"""A Ray node of the test's own: `ray start --block` on free ports and a private temp dir.

Every port Ray would otherwise take at a fixed default (GCS 6379, client server 10001, the
dashboard agent's 52365...) is a free one, and the node's processes are found as the
descendants of its `ray start --block` process, so the test stops its own nodes by PID and
never touches another cluster on this machine (no `ray stop`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.ray_head import PATIENT_RAY
from tests.serve_local import ROOT, free_port

__all__ = ["PATIENT_RAY", "RayNode", "descendants"]

RAY = str(Path(sys.executable).with_name("ray"))


class RayNode:
    def __init__(
        self,
        *,
        head_port: int | None = None,
        num_cpus: float,
        resources: dict[str, float],
    ) -> None:
        self.is_head = head_port is None
        self.gcs_port = free_port() if head_port is None else head_port
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rs-scaling-"))
        self.num_cpus = num_cpus
        self.resources = resources
        self._process: subprocess.Popen[bytes] | None = None
        self._log = self.temp_dir / "ray-start.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def command(self) -> list[str]:
        ports = {
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--metrics-export-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
        }
        command = [RAY, "start", "--block", "--disable-usage-stats"]
        if self.is_head:
            command += ["--head", "--port", str(self.gcs_port), "--include-dashboard", "false"]
            command += ["--ray-client-server-port", str(free_port())]
            command += ["--dashboard-port", str(free_port())]  # even unused, 8265 is checked
        else:
            command += ["--address", self.address]
        command += ["--node-ip-address", "127.0.0.1", "--temp-dir", str(self.temp_dir)]
        command += ["--num-cpus", str(self.num_cpus), "--resources", json.dumps(self.resources)]
        for flag, port in ports.items():
            command += [flag, str(port)]
        return command

    def start(self, environment: dict[str, str]) -> None:
        env = {**os.environ, **PATIENT_RAY, **environment}
        env["PYTHONPATH"] = str(ROOT)  # the app's packages, in every worker of this node
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait_started(self, timeout_s: float = 240) -> bool:
        """Until `ray start` says its node runs (True) or it exits (False)."""
        deadline = time.monotonic() + timeout_s
        while self.running and time.monotonic() < deadline:
            try:
                if "block forever" in self._log.read_text(errors="replace"):
                    return True
            except OSError:
                pass
            time.sleep(1)
        return False

    def processes(self) -> dict[int, str]:
        """The descendants of this node's `ray start` process: {pid: command name}."""
        if self._process is None:
            return {}
        return descendants(self._process.pid)

    def raylet_pid(self, timeout_s: float = 60) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for pid, name in self.processes().items():
                if name == "raylet":
                    return pid
            time.sleep(0.2)
        raise TimeoutError(f"no raylet under ray start ({self.log_tail()})")

    def kill_raylet(self) -> int:
        """SIGKILL this node's raylet: the node fails as a crashed machine's would."""
        pid = self.raylet_pid()
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        """SIGTERM to `ray start --block` (it stops its node), then SIGKILL what is left."""
        if self._process is None:
            return
        leftovers = self.processes()
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._process = None

    def remove(self) -> None:
        """Delete the node's temp dir (logs included); after `stop`."""
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def descendants(root: int) -> dict[int, str]:
    """Every process under `root` ({pid: command name}), read from /proc."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents[int(entry.name)] = (parent, name)
    found: dict[int, str] = {}
    frontier = {root}
    while frontier:
        frontier = {pid for pid, (parent, _) in parents.items() if parent in frontier}
        frontier -= found.keys()
        found.update({pid: parents[pid][1] for pid in frontier})
    return found
