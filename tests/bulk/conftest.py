"""Bulk tests: the generated corpus, the online engine's transcripts of it, a Ray head with
token auth and the dashboard (for `ray job submit`), and helpers to run and read a bulk run.

Every run is a real `python -m cluster.bulk` process. The Ray head is started by the tests
(`ray start --head --block`, free ports, its own temp dir and token file) and stopped by
signalling that one process, which takes down the processes it started.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.dataset as pads
import pytest

from services.bulk.objects import resolve
from services.core.settings import StorageSettings
from services.transcription.audio import decode_audio
from services.transcription.domain import TranscriptionOptions
from services.transcription.engine import WhisperEngine
from tests.bulk.corpus import MAX_DURATION_S, Corpus, build
from tests.s3_server import s3_server  # noqa: F401  (the session fixture)
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 900


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build(tmp_path_factory.mktemp("bulk-corpus") / "audio")


@pytest.fixture(scope="session")
def online_texts(corpus: Corpus, tiny_engine: WhisperEngine) -> dict[str, str]:
    """What the online engine (the in-process reference of the Serve path) hears in each
    good file of the corpus."""
    texts = {}
    for name in corpus.expected:
        audio = decode_audio(corpus.root / name, max_duration_s=MAX_DURATION_S)
        texts[name] = tiny_engine.transcribe(audio, TranscriptionOptions()).text
    return texts


def base_env(data_dir: Path) -> dict[str, str]:
    """A bulk run's environment: this checkout first, small parts, the tests' cap."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYSCRIBE_", "RAY_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
        RAYSCRIBE_DATA_DIR=str(data_dir),
        RAYSCRIBE_BULK__MAX_DURATION_S=str(MAX_DURATION_S),
        RAYSCRIBE_BULK__PART_MAX_AGE_S="0.5",
        RAYSCRIBE_BULK__FILES_PER_CALL="4",
    )
    return env


@dataclass
class RayHead:
    process: subprocess.Popen[bytes]
    temp_dir: Path
    token_path: Path
    gcs_address: str
    dashboard_url: str

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return {
            **base,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "RAY_ADDRESS": self.gcs_address,
        }

    def token(self) -> str:
        return self.token_path.read_text().strip()


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """`ray start --head` on free ports (never 6379), dashboard on, token auth on.

    A busy machine can miss the fixed 30 s Ray gives a raylet to come up: then it is
    started again (its log is kept under the test's tmp dir)."""
    logs = tmp_path_factory.mktemp("ray-head-logs")
    data = tmp_path_factory.mktemp("ray-head-data")
    for attempt in range(1, HEAD_START_ATTEMPTS + 1):
        log_path = logs / f"ray-start-{attempt}.log"
        head = _start_head(data, log_path)
        try:
            _wait_for_dashboard(head, log_path)
            break
        except HeadExitedError:
            _stop(head)
            if attempt == HEAD_START_ATTEMPTS:
                raise
        except BaseException:
            _stop(head)
            raise
    try:
        yield head
    finally:
        _stop(head)


HEAD_START_ATTEMPTS = 3


class HeadExitedError(RuntimeError):
    pass


def _start_head(data: Path, log_path: Path) -> RayHead:
    temp_dir = Path(tempfile.mkdtemp(prefix="rsbh-", dir="/tmp"))  # short: socket paths
    token_path = temp_dir / "token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    ports = {
        "--port": free_port(),
        "--dashboard-port": free_port(),
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--metrics-export-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
    }
    env = base_env(data)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    command = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus=2",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
        "--disable-usage-stats", *(f"{flag}={port}" for flag, port in ports.items()),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    return RayHead(
        process,
        temp_dir,
        token_path,
        gcs_address=f"127.0.0.1:{ports['--port']}",
        dashboard_url=f"http://127.0.0.1:{ports['--dashboard-port']}",
    )


def _wait_for_dashboard(head: RayHead, log_path: Path, timeout_s: float = 300) -> None:
    """Up means `ray start` finished (its raylet registered: it says it now blocks) and the
    Jobs API answers. The dashboard alone can answer while the raylet is still failing."""
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {head.token()}"}
    while time.monotonic() < deadline:
        if head.process.poll() is not None:
            raise HeadExitedError(f"ray start exited with {head.process.returncode}")
        if b"will now block forever" not in log_path.read_bytes():
            time.sleep(1)
            continue
        try:
            # The Jobs API answers only once the dashboard's job module is up.
            if httpx.get(f"{head.dashboard_url}/api/jobs/", headers=headers, timeout=5).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("the Ray head's dashboard did not come up")


def _stop(head: RayHead) -> None:
    """SIGTERM to `ray start --block` stops what it started; then nothing of ours is left."""
    if head.process.poll() is None:
        head.process.send_signal(signal.SIGTERM)
        try:
            head.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.process.kill()
            head.process.wait()
    for pid in _pids_using(head.temp_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


def _pids_using(temp_dir: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(temp_dir).encode() in cmdline:
            found.append(int(entry.name))
    return found


def run_bulk(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.bulk", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def start_bulk(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cluster.bulk", *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def events(output: str, name: str) -> list[dict[str, Any]]:
    """The JSON log lines of one event in a run's output."""
    found = []
    for line in output.splitlines():
        start = line.find('{"')
        if start < 0 or f'"event": "{name}"' not in line:
            continue
        try:
            found.append(json.loads(line[start:]))
        except json.JSONDecodeError:
            continue
    return found


def read_rows(output: str, storage: StorageSettings | None = None) -> list[dict[str, Any]]:
    """Every committed row, read as a data engineer would (pyarrow's dataset reader)."""
    where = resolve(output, storage or StorageSettings())
    dataset = pads.dataset(where.path, filesystem=where.fs, format="parquet")
    rows: list[dict[str, Any]] = dataset.to_table().to_pylist()
    return rows


def part_names(output: str, storage: StorageSettings | None = None) -> list[str]:
    from services.bulk.output import OutputDir

    return [i.base_name for i in OutputDir(resolve(output, storage or StorageSettings())).parts()]
