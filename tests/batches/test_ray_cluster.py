"""Batches on a real Ray cluster: the session's `ray start --head` (tests/ray_head.py: free
ports, its own temp dir, the dashboard on, Ray's token auth on), the real bulk job
(`python -m cluster.bulk`), the app on loopback with JWT auth, and the `rayscribe` CLI as a
user runs it (a subprocess).

- `POST /v1/batches` submits through the Jobs API with the token only the service holds; the
  job's driver writes counts to the batch's row; `GET` follows the Ray job to the end.
- `rayscribe bulk submit --speakers` then `rayscribe bulk status --wait` until done, `logs`,
  `list`.
- `DELETE` stops a running Ray job.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.dataset as pads
import pytest

from cluster.ray_jobs import RayJobsClient
from deployments.dependencies import build_ingress_resources
from deployments.fastapi_app import create_app
from services.bulk.batches_errors import RayJobsError
from services.core.auth_settings import AuthMode, AuthSettings
from services.core.settings import Settings
from services.resources import build_resources
from tests.batches.conftest import NoTranscriber
from tests.conftest import ENGLISH
from tests.idp import API_CLIENT, LocalIdP
from tests.live_app import serve_on_loopback
from tests.ray_head import RayHead

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bulk-roots")
    good = root / "calls"
    good.mkdir()
    for clip in ENGLISH[:5]:
        shutil.copy(clip.path, good / clip.name)
    (good / "broken.wav").write_bytes(b"RIFF not really a wave file" * 10)
    few = root / "few"
    few.mkdir()
    for clip in ENGLISH[5:8]:
        shutil.copy(clip.path, few / clip.name)
    return root


@pytest.fixture(scope="module")
def app_url(
    ray_head: RayHead,
    roots: Path,
    batches_postgres: str,
    idp: LocalIdP,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The app on loopback: PostgreSQL (which the job's driver writes to as well), JWT auth,
    Ray's address and token in `bulk` settings, the code of this checkout for the job."""
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path_factory.mktemp("batches-app"),
        database={"url": batches_postgres},
        auth=AuthSettings(
            mode=AuthMode.JWT,
            issuer=idp.issuer,
            audience=API_CLIENT,
            client_id=API_CLIENT,
            open_docs=False,
        ),
        bulk={
            "allowed_roots": [str(roots)],
            "ray_address": ray_head.dashboard_url,
            "ray_token": ray_head.token,
            "code_dir": str(ROOT),
            "python": sys.executable,
            "progress_interval_s": 0.5,
            "part_max_age_s": 0.5,
            "files_per_call": 4,
        },
    )
    runtime = build_resources(settings, nudge=lambda: None)
    app = create_app(build_ingress_resources(runtime, NoTranscriber()))
    with serve_on_loopback(app) as url:
        yield url


def _bearer(idp: LocalIdP, sub: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {idp.token(sub=sub, client_roles=('bulk',))}"}


def _wait_finished(client: httpx.Client, batch_id: str, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        batch: dict[str, Any] = client.get(f"/v1/batches/{batch_id}", headers=headers).json()
        if batch["state"] in ("succeeded", "failed", "stopped"):
            return batch
        time.sleep(1)
    raise TimeoutError(f"batch {batch_id} did not finish in {RUN_TIMEOUT_S} s")


def test_the_cluster_refuses_callers_without_its_token(ray_head: RayHead) -> None:
    """Token auth is really on: what the service holds is what lets it in."""
    assert httpx.get(f"{ray_head.dashboard_url}/api/jobs/", timeout=30).status_code == 401
    with pytest.raises(RayJobsError, match=r"[Aa]uthentication"):
        RayJobsClient(ray_head.dashboard_url, None).info("anything")


def test_post_batches_runs_the_bulk_job_to_completion(
    app_url: str, roots: Path, idp: LocalIdP
) -> None:
    headers = _bearer(idp)
    output = roots / "rows-api"
    with httpx.Client(base_url=app_url, timeout=120) as client:
        response = client.post(
            "/v1/batches",
            json={"input": str(roots / "calls"), "output": str(output)},
            headers=headers,
        )
        assert response.status_code == 201, response.text
        batch_id = response.json()["id"]
        batch = _wait_finished(client, batch_id, headers)
        logs = client.get(f"/v1/batches/{batch_id}/logs", headers=headers, params={"tail": 50})
    assert batch["state"] == "succeeded", batch
    counts = batch["counts"]
    assert counts["total"] == 6
    assert counts["done"] + counts["failed"] == 6
    assert counts["failed"] == 1, "the broken file is a row with its error"
    expected_s = sum(clip.duration_s for clip in ENGLISH[:5])
    assert abs(counts["audio_seconds"] - expected_s) < 0.1 * expected_s
    assert batch["ray_job_id"] == f"rayscribe-batch-{batch_id}"
    assert logs.status_code == 200
    assert logs.text.strip(), "the Ray job's log is tailed"
    rows = pads.dataset(str(output), format="parquet").to_table().to_pylist()
    assert sorted(Path(r["path"]).name for r in rows) == sorted(
        [c.name for c in ENGLISH[:5]] + ["broken.wav"]
    )


def _cli(*args: str, url: str, token: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAYSCRIBE_TOKEN": token, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args, "--server", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S + 60,
    )


def test_cli_bulk_submit_then_status_until_done(app_url: str, roots: Path, idp: LocalIdP) -> None:
    token = idp.token(sub="bob", client_roles=("bulk",))
    output = roots / "rows-cli"
    submitted = _cli(
        "bulk", "submit", "--input", str(roots / "few"), "--output", str(output),
        "--format", "jsonl", "--speakers", "--json", url=app_url, token=token,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    batch_id = json.loads(submitted.stdout)["id"]
    assert f"submitted batch {batch_id}" in submitted.stderr
    status = _cli(
        "bulk", "status", batch_id, "--wait", "--interval", "1", "--json", url=app_url, token=token
    )
    assert status.returncode == 0, status.stderr
    done = json.loads(status.stdout)
    assert done["state"] == "succeeded"
    assert done["counts"]["done"] == done["counts"]["total"] == 3
    assert "succeeded" in status.stderr  # the progress lines
    listed = _cli("bulk", "list", "--json", url=app_url, token=token)
    assert listed.returncode == 0, listed.stderr
    assert [b["id"] for b in json.loads(listed.stdout)["data"]] == [batch_id]  # bob's only
    logs = _cli("bulk", "logs", batch_id, "--tail", "5", url=app_url, token=token)
    assert logs.returncode == 0, logs.stderr
    assert 0 < len(logs.stdout.splitlines()) <= 5
    rows = [json.loads(line) for f in sorted(output.glob("*.jsonl")) for line in f.open()]
    assert len(rows) == 3
    assert all(r["error"] is None and r["text"] for r in rows)
    # --speakers went from the CLI through the API to the job: one voice per clip.
    assert all(json.loads(r["options"])["speakers"] for r in rows)
    assert {s["speaker"] for r in rows for s in r["segments"]} == {"A"}


def test_delete_stops_the_ray_job(
    app_url: str, roots: Path, idp: LocalIdP, ray_head: RayHead
) -> None:
    headers = _bearer(idp, "carol")
    with httpx.Client(base_url=app_url, timeout=120) as client:
        batch = client.post(
            "/v1/batches",
            json={"input": str(roots / "calls"), "output": str(roots / "rows-stopped")},
            headers=headers,
        ).json()
        stopped = client.delete(f"/v1/batches/{batch['id']}", headers=headers)
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["state"] == "stopped"
        ray = RayJobsClient(ray_head.dashboard_url, _secret(ray_head.token))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            info = ray.info(batch["ray_job_id"])
            if info is not None and info.status.value in ("STOPPED", "FAILED", "SUCCEEDED"):
                break
            time.sleep(1)
        assert info is not None
        assert info.status.value == "STOPPED"
        again = client.get(f"/v1/batches/{batch['id']}", headers=headers).json()
        assert again["state"] == "stopped"


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)
