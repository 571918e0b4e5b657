"""Bulk runs on a `ray start --head` cluster (token auth and dashboard on):

- input and output in S3 (moto's server): the driver is killed (SIGKILL) midway, a rerun
  completes the rest with no duplicate rows, a third run processes nothing;
- through `ray job submit --working-dir .` while another actor holds every logical CPU of
  the cluster (as a Serve app does): stopped midway with `ray job stop`, resubmitted, it
  completes; resubmitted again, it processes nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.fs as pafs

from services.core.settings import StorageSettings
from tests.bulk.conftest import (
    ROOT,
    VENV_BIN,
    RayHead,
    base_env,
    events,
    part_names,
    read_rows,
    run_bulk,
    start_bulk,
)
from tests.bulk.corpus import Corpus
from tests.bulk.test_bulk_local import check_rows
from tests.s3_server import S3Server

WAIT_S = 900


def _wait_for_part(
    output: str,
    storage: StorageSettings,
    process: subprocess.Popen[bytes],
    timeout_s: float = WAIT_S,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if part_names(output, storage):
            return
        if process.poll() is not None:
            raise AssertionError("the run ended before a part was written")
        time.sleep(0.2)
    raise AssertionError("no part was written in time")


def _upload(corpus: Corpus, fs: pafs.FileSystem, prefix: str) -> None:
    for path in sorted(corpus.root.rglob("*")):
        if path.is_file() and path.suffix != ".jsonl":
            with fs.open_output_stream(f"{prefix}/{path.relative_to(corpus.root)}") as out:
                out.write(path.read_bytes())


def test_s3_run_killed_midway_resumes_without_duplicates(
    corpus: Corpus,
    online_texts: dict[str, str],
    s3_server: S3Server,
    ray_head: RayHead,
    tmp_path: Path,
) -> None:
    bucket = s3_server.new_bucket("bulk")
    _upload(corpus, s3_server.filesystem(), f"{bucket}/in")
    source, output = f"s3://{bucket}/in", f"s3://{bucket}/out"
    storage = s3_server.settings()
    env = ray_head.env({**base_env(tmp_path / "data"), **s3_server.env()})
    args = ["--input", source, "--output", output]

    killed = start_bulk(args, env, tmp_path / "killed.log")
    try:
        _wait_for_part(output, storage, killed)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    before = read_rows(output, storage)
    assert 0 < len(before) < corpus.count, "killed midway"

    resumed = run_bulk(args, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (planned,) = events(resumed.stderr, "bulk_planned")
    assert planned["skipped"] == len(before)
    assert planned["to_process"] == corpus.count - len(before)
    rows = read_rows(output, storage)
    assert len(rows) == corpus.count
    check_rows(rows, corpus, source, online_texts, "s3")

    again = run_bulk(args, env)
    assert again.returncode == 0, again.stderr[-3000:]
    (planned,) = events(again.stderr, "bulk_planned")
    assert planned["to_process"] == 0
    assert len(read_rows(output, storage)) == corpus.count


HOLD = """
import ray
ray.init(namespace="bulk-test-hold")
@ray.remote(num_cpus=2)
class Hold:
    def ping(self):
        return ray.available_resources().get("CPU", 0.0)
hold = Hold.options(name="hold", lifetime="detached").remote()
print("free CPUs:", ray.get(hold.ping.remote()))
"""


def _jobs(head: RayHead, env: dict[str, str], *args: str, timeout_s: float = WAIT_S) -> str:
    done = subprocess.run(
        [str(VENV_BIN / "ray"), "job", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout + done.stderr


def test_ray_job_submit_stopped_midway_resumes_while_serve_holds_the_cpus(
    corpus: Corpus, online_texts: dict[str, str], ray_head: RayHead, tmp_path: Path
) -> None:
    env = ray_head.env(base_env(tmp_path / "data"))
    held = subprocess.run(
        [str(VENV_BIN / "python"), "-c", HOLD],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert "free CPUs: 0" in held.stdout, held.stderr[-2000:]
    try:
        _stop_and_resume(corpus, online_texts, ray_head, env, tmp_path)
    finally:
        subprocess.run(
            [str(VENV_BIN / "python"), "-c", RELEASE], env=env, capture_output=True, timeout=WAIT_S
        )


RELEASE = """
import ray
ray.init(namespace="bulk-test-hold")
ray.kill(ray.get_actor("hold"))
"""


def _stop_and_resume(
    corpus: Corpus,
    online_texts: dict[str, str],
    ray_head: RayHead,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    jobs_env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    jobs_env["RAY_API_SERVER_ADDRESS"] = ray_head.dashboard_url
    output = tmp_path / "out"
    entry = ["--", "python", "-m", "cluster.bulk", "--input", str(corpus.root)]
    entry += ["--output", str(output), "--format", "jsonl"]
    submit = ["submit", "--working-dir", ".", *entry]

    job_id = f"bulk-test-{os.getpid()}-{int(time.time())}"
    _jobs(ray_head, jobs_env, "submit", "--no-wait", "--submission-id", job_id, *submit[1:])
    _wait_for_jsonl_part(output)
    _jobs(ray_head, jobs_env, "stop", job_id)
    status = _jobs(ray_head, jobs_env, "status", job_id)
    assert "stopped" in status.lower() or "failed" in status.lower(), status
    before = _jsonl_rows(output)
    assert 0 < len(before) < corpus.count, "stopped midway"

    logs = _jobs(ray_head, jobs_env, *submit)
    (planned,) = events(logs, "bulk_planned")
    assert planned["to_process"] == corpus.count - len(before)
    rows = _jsonl_rows(output)
    assert len(rows) == corpus.count
    check_rows(rows, corpus, str(corpus.root), online_texts, "ray job submit")
    assert "MapBatches(EngineStage)" in logs

    logs = _jobs(ray_head, jobs_env, *submit)
    (planned,) = events(logs, "bulk_planned")
    assert planned["to_process"] == 0
    assert len(_jsonl_rows(output)) == corpus.count


def _wait_for_jsonl_part(output: Path, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if output.is_dir() and any(p.name.startswith("part-") for p in output.iterdir()):
            return
        time.sleep(0.2)
    raise AssertionError("no part was written in time")


def _jsonl_rows(output: Path) -> list[dict]:
    import json

    rows = []
    for part in sorted(output.glob("part-*.jsonl")):
        rows += [json.loads(line) for line in part.read_text().splitlines() if line.strip()]
    return rows
