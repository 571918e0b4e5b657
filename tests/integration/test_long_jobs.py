"""A long job on the real cluster, its tracker killed mid-run: same cuts, same transcript."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import ray

from tests.conftest import report, word_error_rate
from tests.integration.serve_admin import tracker_replicas
from tests.long_audio import build

pytestmark = pytest.mark.integration


def _submit(http: httpx.Client, path: Path) -> str:
    with path.open("rb") as f:
        response = http.post(
            "/v1/jobs", files={"file": (path.name, f)}, data={"model": "whisper-1"}
        )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _wait(http: httpx.Client, job_id: str, until: Any, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if until(body):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never got there: {body}")


def _finished(body: dict[str, Any]) -> bool:
    return body["status"] in ("succeeded", "failed", "cancelled")


async def _cut_points(database_url: str, job_id: str) -> list[float]:
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        raw = await connection.fetchval("SELECT cut_points FROM jobs WHERE id = $1", job_id)
    finally:
        await connection.close()
    return list(json.loads(raw) if isinstance(raw, str) else raw)


def test_a_long_job_resumes_at_its_cut_points_after_the_tracker_dies(
    serve_url: str, http: httpx.Client, serve_database: str, tmp_path: Path
) -> None:
    # Three chunks of the test app's 120 s (the default is 300 s; the cut logic is the
    # same, and jobs/test_long_audio.py runs the 300 s case); the job is stopped after the
    # first chunk is stored. No pause within 35 s of 240 s: that boundary overlaps.
    recording = build(280, [120.0, 240.0], no_pause_s=[0, 35])
    path = recording.write_flac(tmp_path / "long.flac")
    words = {"response_format": "verbose_json", "timestamp_granularities[]": ["word"]}

    whole_id = _submit(http, path)
    assert _wait(http, whole_id, _finished)["status"] == "succeeded"
    whole = http.get(f"/v1/jobs/{whole_id}/result", params=words).json()
    whole_cuts = asyncio.run(_cut_points(serve_database, whole_id))

    job_id = _submit(http, path)
    _wait(http, job_id, lambda b: b["progress"]["done"] >= 1 or _finished(b))
    (tracker,) = tracker_replicas()
    # Serve starts a new replica; it takes the job over when the lease expires.
    ray.kill(ray.get_actor(tracker, namespace="serve"), no_restart=True)
    done = _wait(http, job_id, _finished)
    assert done["status"] == "succeeded", done
    assert done["attempts"] >= 2, "the job was not interrupted"
    resumed = http.get(f"/v1/jobs/{job_id}/result", params=words).json()
    cuts = asyncio.run(_cut_points(serve_database, job_id))
    report(f"integration resume: cut points {cuts} (uninterrupted: {whole_cuts})")
    assert cuts == whole_cuts
    assert len(cuts) == 4  # two boundaries: (end, next start) each
    # A job's chunk runs as one unit in windows of its own (`packing.seal`), never packed
    # with whatever else is in flight, so the chunk decoded again gives the same words.
    drift = word_error_rate(whole["text"], resumed["text"])
    report(f"integration resume: WER between the resumed and the uninterrupted run {drift:.3f}")
    assert resumed["text"] == whole["text"]
    assert resumed["words"] == whole["words"]
    ends = [w["end"] for w in resumed["words"]]
    assert ends == sorted(ends)
    assert ends[-1] <= recording.duration_s + 0.5
