"""A `ray start --head` cluster of the test's own, with Ray's token auth on.

Every port is a free one (never 6379, never the defaults other clusters on this machine
use), the temp dir is private, and the cluster is stopped by the PIDs of the processes
that carry that temp dir on their command line, and their children (the job drivers):
never a blanket `ray stop`. Ray 2.60 turns token auth on with `RAY_AUTH_MODE=token`; the
token comes from `RAY_AUTH_TOKEN` (what `ray get-auth-token` would print for it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.servers import free_port

VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 180


@dataclass
class RayHead:
    address: str
    """The dashboard (Jobs API) URL."""
    token: str
    temp_dir: Path

    def stop(self) -> None:
        marker = str(self.temp_dir)
        ours = _descendants({pid for pid, cmd in _processes().items() if marker in cmd[0]})
        ours.discard(os.getpid())
        _signal_all(ours, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(pid) for pid in ours):
            time.sleep(0.2)
        _signal_all({pid for pid in ours if _alive(pid)}, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _processes() -> dict[int, tuple[str, int]]:
    """pid -> (command line, parent pid), from /proc."""
    found: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError):
            continue
        found[int(entry.name)] = (cmdline, ppid)
    return found


def _descendants(roots: set[int]) -> set[int]:
    """`roots` and every process below them (a job's driver has no marker of its own)."""
    children: dict[int, list[int]] = {}
    for pid, (_, ppid) in _processes().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(roots), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def start_ray_head(num_cpus: int = 2, attempts: int = 3) -> RayHead:
    """On a loaded machine the raylet sometimes gives up waiting for its dashboard agent
    (a fixed wait inside Ray): such a start is cleaned up and tried again."""
    for attempt in range(1, attempts + 1):
        try:
            return _start_once(num_cpus)
        except RuntimeError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _start_once(num_cpus: int) -> RayHead:
    temp_dir = Path(tempfile.mkdtemp(prefix="rsb-", dir="/tmp"))
    token = secrets.token_hex(32)
    dashboard = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYSCRIBE_"))},
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        # `python` in a job's entrypoint is the project's venv.
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [
        str(VENV_BIN / "ray"), "start", "--head",
        "--port", str(free_port()),
        "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard),
        "--include-dashboard", "true",
        "--ray-client-server-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--node-manager-port", str(free_port()),
        "--object-manager-port", str(free_port()),
        "--temp-dir", str(temp_dir),
        "--num-cpus", str(num_cpus),
        "--disable-usage-stats",
    ]  # fmt: skip
    head = RayHead(f"http://127.0.0.1:{dashboard}", token, temp_dir)
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"ray start failed ({done.returncode}): {done.stderr[-300:]}\n{_raylet_log(head)}"
            )
        _wait_for_jobs_api(head)
    except BaseException:
        head.stop()
        raise
    return head


def _raylet_log(head: RayHead) -> str:
    """The raylet's fatal lines and the dashboard agent's last ones (why a start failed)."""
    found = []
    for name in ("raylet.out", "dashboard_agent.log", "dashboard_agent.err"):
        for log in sorted(head.temp_dir.glob(f"session_*/logs/{name}")):
            lines = log.read_text(errors="replace").splitlines()
            keep = [line for line in lines if " C " in line or "Error" in line][:5] + lines[-5:]
            found.append(f"--- {name}\n" + "\n".join(line[:300] for line in keep))
    return "\n".join(found) or "(no logs)"


def _wait_for_jobs_api(head: RayHead) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    headers = {"Authorization": f"Bearer {head.token}"}
    while time.monotonic() < deadline:
        try:
            if (
                httpx.get(f"{head.address}/api/jobs/", headers=headers, timeout=5).status_code
                == 200
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Ray's Jobs API at {head.address} did not come up")
