"""Every metric we list reaches a real Prometheus, and the Ray dashboard shows the app.

The session's Ray head, started as ops start one (`ray start --head` with the dashboard and
token authentication, free ports, its own temp dir: tests/ray_head.py), the app deployed
with `serve deploy` through the dashboard's API and shut down after the module. Prometheus
(Debian's package) finds Ray's metrics exports through the dashboard's service-discovery
file and loads our alert rules.
After real traffic (sync requests, a cache hit, a refused upload, jobs, a quota refusal,
and a flood that fills the Whisper queue so that callers get 503 and jobs are interrupted)
each metric must be in Prometheus with a value that fits what was sent. Headless Chromium
then opens the dashboard's Serve page with the token and finds the app and its three
deployments healthy (and without the token, only the token dialog).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.core.metrics import CATALOG
from services.migrations import upgrade
from tests import serve_local as local
from tests.bulk.conftest import base_env, read_rows, run_bulk
from tests.conftest import ENGLISH, FIXTURES, report
from tests.ops.browser import chromium
from tests.ops.prometheus import Prometheus
from tests.ray_head import RayHead

pytestmark = pytest.mark.integration
APP = local.APP_NAME
DEPLOYMENTS = ("Ingress", "WhisperTranscriber", "JobTracker")
METRICS_WAIT_S = 180


@dataclass
class Sent:
    """What the traffic did, to judge the metrics by."""

    audio_s: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    jobs: list[str] = field(default_factory=list)
    interruptions: int = 0
    bulk_rows: dict[str, int] = field(default_factory=dict)
    bulk_worker: str = ""
    """The bulk driver's worker id, which labels its series: the session's other bulk runs
    on this head count into series of their own, and Ray's agent keeps those after their
    drivers end (and may show them again only when a new run reports)."""


@dataclass
class Cluster:
    head: RayHead
    url: str
    prometheus: Prometheus
    sent: Sent


def _config(data_dir: Path, port: int) -> dict[str, Any]:
    settings = {
        "data_dir": str(data_dir),
        "jobs": {"poll_interval_s": 0.5, "retry_backoff_s": 0.2, "lease_s": 10},
        "limits": {"max_concurrent_jobs": 3},
    }

    def edit(config: dict[str, Any]) -> None:
        for deployment in config["applications"][0]["deployments"]:
            if deployment["name"] == "WhisperTranscriber":
                # A small queue, so the flood below fills it: 503s and job interruptions.
                deployment.update(max_ongoing_requests=2, max_queued_requests=2)
                deployment["user_config"]["max_batch_windows"] = 2

    return local.load_config(port=port, settings=settings, edit=edit)


@pytest.fixture(scope="module")
def cluster(ray_head: RayHead, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The app deployed onto the session's head; shut down again at the end of the module
    (its replicas hold the head's CPUs, which the bulk tests need whole)."""
    prometheus = None
    try:
        data_dir = tmp_path_factory.mktemp("ops-data")
        upgrade(f"sqlite+aiosqlite:///{data_dir / 'rayscribe.db'}")
        port = local.free_port()
        ray_head.deploy(_config(data_dir, port))
        ray_head.wait_running(APP)
        url = f"http://127.0.0.1:{port}"
        local.wait_until_ready(url, timeout_s=120)
        workdir = tmp_path_factory.mktemp("prometheus")
        prometheus = Prometheus(ray_head.service_discovery_file, workdir)
        sent = _traffic(url)
        sent.bulk_rows, sent.bulk_worker = _bulk_run(ray_head, tmp_path_factory.mktemp("bulk"))
    except BaseException:
        ray_head.keep_logs = True  # for whoever reads the failure: the path is printed above
        with contextlib.suppress(Exception):  # the failure above is the one to report
            _stop(prometheus, ray_head)
        raise
    try:
        yield Cluster(ray_head, url, prometheus, sent)
    finally:
        _stop(prometheus, ray_head)


def _stop(prometheus: Prometheus | None, head: RayHead) -> None:
    try:
        if prometheus is not None:
            prometheus.stop()
    finally:
        head.serve_shutdown()


def _transcribe(
    http: httpx.Client, path: Path, route: str = "transcriptions", temperature: float = 0.0
) -> int:
    with path.open("rb") as file:
        answer = http.post(
            f"/v1/audio/{route}",
            files={"file": (path.name, file)},
            data={"model": "whisper-1", "temperature": str(temperature)},
        )
    return answer.status_code


def _submit(http: httpx.Client, path: Path) -> httpx.Response:
    with path.open("rb") as file:
        return http.post("/v1/jobs", files={"file": (path.name, file)}, data={"model": "whisper-1"})


def _traffic(url: str) -> Sent:
    sent = Sent()

    lock = threading.Lock()

    def count(status: int, audio_s: float = 0.0) -> None:
        with lock:
            sent.statuses[status] = sent.statuses.get(status, 0) + 1
            sent.audio_s += audio_s if status in (200, 202) else 0.0

    clip = ENGLISH[0]
    with httpx.Client(base_url=url, timeout=120) as http:
        for _ in range(2):  # the second is a result-cache hit
            count(_transcribe(http, clip.path), clip.duration_s)
        count(_transcribe(http, ENGLISH[1].path, "translations"), ENGLISH[1].duration_s)
        count(_transcribe(http, FIXTURES / "hostile" / "random_bytes.bin"))  # 400 invalid_audio
        # Jobs until the per-user quota (3 queued or running) refuses one with 429.
        for clip in ENGLISH[10:16]:
            answer = _submit(http, clip.path)
            count(answer.status_code, clip.duration_s)
            if answer.status_code == 202:
                sent.jobs.append(answer.json()["id"])
            elif answer.status_code == 429:
                break
        # Waves of concurrent requests against a Whisper queue of 2 (a new temperature for
        # each, so the result cache never answers) until some caller gets 503. The jobs
        # queue through the tracker's own handle (the limit counts per caller), so they
        # mostly finish uninterrupted; an interruption, if one happens, must be counted.

        def one(index: int) -> None:
            clip = ENGLISH[index % 12]
            try:
                status = _transcribe(http, clip.path, temperature=(index % 990) / 1000)
            except httpx.TimeoutException:
                status = 0  # the machine is too busy: not a status the app sent
            count(status, clip.duration_s)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for wave in range(4):
                list(pool.map(one, range(1 + 8 * wave, 9 + 8 * wave)))
                if 503 in sent.statuses:
                    break
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            views = [http.get(f"/v1/jobs/{job}").json() for job in sent.jobs]
            if all(view["status"] == "succeeded" for view in views):
                break
            time.sleep(1)
        assert [view["status"] for view in views] == ["succeeded"] * len(sent.jobs)
        sent.interruptions = sum(view.get("interruptions", 0) for view in views)
    return sent


def _bulk_run(head: RayHead, workdir: Path) -> tuple[dict[str, int], str]:
    """A small bulk run on the head beside the app (two clips and one file that is not
    audio), its driver staying up for Ray's next metrics report: the rows it wrote, by
    status, and its worker id."""
    inputs = workdir / "in"
    inputs.mkdir()
    for clip in ENGLISH[:2]:
        shutil.copy(clip.path, inputs / clip.path.name)
    shutil.copy(FIXTURES / "hostile" / "random_bytes.bin", inputs / "broken.wav")
    env = head.env(base_env(workdir / "data"))
    env["RAYSCRIBE_BULK__METRICS_FLUSH_S"] = "15"
    run = run_bulk(["--input", str(inputs), "--output", str(workdir / "out")], env)
    assert run.returncode == 0, run.stderr[-3000:]
    worker = re.search(r"worker_id\W+([0-9a-f]{56})", run.stdout + run.stderr)
    assert worker is not None, run.stderr[-3000:]
    rows = read_rows(str(workdir / "out"))
    failed = sum(1 for row in rows if row["error"])
    assert (len(rows), failed) == (3, 1), rows
    return {"done": len(rows) - failed, "failed": failed}, worker.group(1)


def _driver_total(prometheus: Prometheus, promql: str, expected: float) -> float:
    """The sum of `promql` (series of one process), read again until it reaches
    `expected` or the wait ends: the driver's last report comes a few seconds after the
    run."""
    deadline = time.monotonic() + METRICS_WAIT_S
    while True:
        total = sum(prometheus.values(promql))
        if total >= expected * 0.95 or time.monotonic() > deadline:
            return total
        time.sleep(2)


def _wait_for(prometheus: Prometheus, names: list[str]) -> set[str]:
    """The names among `names` Prometheus has not seen within the wait."""
    deadline = time.monotonic() + METRICS_WAIT_S
    missing = set(names)
    while missing and time.monotonic() < deadline:
        missing -= prometheus.names()
        time.sleep(2)
    return missing


def _exported(name: str, kind: str) -> str:
    return f"ray_{name}_count" if kind == "histogram" else f"ray_{name}"


SERVE_METRICS = [
    "ray_serve_num_http_requests_total",
    "ray_serve_http_request_latency_ms_bucket",
    "ray_serve_deployment_request_counter_total",
    "ray_serve_deployment_processing_latency_ms_bucket",
    "ray_serve_deployment_queued_queries",
    "ray_serve_replica_processing_queries",
    "ray_serve_deployment_replica_healthy",
    "ray_serve_autoscaling_target_replicas",
    "ray_serve_batch_queue_length",
    "ray_serve_batch_wait_time_ms_bucket",
    "ray_serve_batch_utilization_percent_bucket",
    "ray_serve_batches_processed_total",
]


def test_every_listed_metric_reaches_prometheus(cluster: Cluster) -> None:
    ours = [_exported(s.name, s.kind) for s in CATALOG]
    missing = _wait_for(cluster.prometheus, ours + SERVE_METRICS)
    assert missing == set(), f"not in Prometheus after {METRICS_WAIT_S} s: {sorted(missing)}"
    for spec in CATALOG:  # the values seen, in the run's summary of figures
        name = f"ray_{spec.name}" + ("_count" if spec.kind == "histogram" else "")
        by = ", ".join(spec.labels)
        query = f"sum by ({by}) ({name})" if by else f"sum({name})"
        seen = {
            ",".join(f"{k}={v}" for k, v in sample["metric"].items()) or "-": sample["value"][1]
            for sample in cluster.prometheus.query(query)
        }
        report(f"prometheus {name}: {seen}")


def _one(prometheus: Prometheus, promql: str) -> float:
    values = prometheus.values(promql)
    assert len(values) == 1, f"{promql}: {values}"
    return values[0]


def test_request_and_audio_metrics_match_the_traffic(cluster: Cluster) -> None:
    p, sent = cluster.prometheus, cluster.sent
    _wait_for(p, ["ray_rayscribe_requests_total", "ray_rayscribe_audio_seconds_total"])
    ok = _one(p, 'sum(ray_rayscribe_requests_total{route="/v1/audio/transcriptions",status="200"})')
    assert ok >= 2
    assert _one(p, 'sum(ray_rayscribe_requests_total{route="/v1/jobs",status="429"})') >= 1
    assert _one(p, 'sum(ray_rayscribe_requests_total{status="503"})') >= 1
    models = {s["metric"]["model"] for s in p.query("ray_rayscribe_requests_total")}
    assert models == {"tiny.en"}
    transcribed = _one(p, 'sum(ray_rayscribe_audio_seconds_total{model="tiny.en"})')
    # Sync audio that ran (cache hits do not) plus the jobs' audio: at least one clip's.
    # Cache hits are not transcribed; an interrupted job's chunk may be sent again.
    assert ENGLISH[0].duration_s <= transcribed <= 2 * sent.audio_s
    assert _one(p, 'sum(ray_rayscribe_audio_seconds_total{task="translate"})') > 0
    rtf = _one(
        p, "sum(ray_rayscribe_real_time_factor_sum) / sum(ray_rayscribe_real_time_factor_count)"
    )
    assert 0 < rtf < 100


def test_batch_metrics_are_consistent(cluster: Cluster) -> None:
    """Counts are exact; Ray rebuilds a histogram's `_sum` from bucket midpoints, so means
    are judged loosely and exact ones come from counters (windows / batches)."""
    p = cluster.prometheus
    batches = _one(p, "sum(ray_rayscribe_batch_windows_count)")
    windows = _one(p, "sum(ray_rayscribe_windows_decoded_total)")
    assert batches >= 1
    assert batches <= windows <= 4 * batches  # at most 2 windows a batch here, plus retries
    fill = _one(
        p,
        "sum(ray_rayscribe_window_fill_seconds_sum) / sum(ray_rayscribe_window_fill_seconds_count)",
    )
    assert 0 < fill <= 30
    assert _one(p, "sum(ray_rayscribe_batch_inference_seconds_count)") == batches
    assert _one(p, "sum(ray_rayscribe_batch_inference_seconds_sum)") > 0
    assert _one(p, "sum(ray_rayscribe_queue_wait_seconds_count)") >= batches


def test_bulk_rows_and_batches_are_exported(cluster: Cluster) -> None:
    """The bulk run's rows by status (from its driver, through Ray's metrics agent), and the
    batches gauge with every state at 0 (this app stored no batch)."""
    p, sent = cluster.prometheus, cluster.sent
    _wait_for(p, ["ray_rayscribe_bulk_rows_total", "ray_rayscribe_batches"])
    worker = f'WorkerId="{sent.bulk_worker}"'
    for status, rows in sent.bulk_rows.items():
        query = f'ray_rayscribe_bulk_rows_total{{status="{status}",{worker}}}'
        seen = _driver_total(p, query, rows)
        report(f"prometheus ray_rayscribe_bulk_rows_total{{status={status}}}: {seen}")
        assert seen == rows
    audio_s = sum(clip.duration_s for clip in ENGLISH[:2])
    seen = _driver_total(p, f"ray_rayscribe_bulk_audio_seconds_total{{{worker}}}", audio_s)
    report(f"prometheus ray_rayscribe_bulk_audio_seconds_total: {seen:.2f}")
    assert seen == pytest.approx(audio_s, 0.05)
    states = {s["metric"]["state"]: float(s["value"][1]) for s in p.query(
        "sum by (state) (ray_rayscribe_batches)"
    )}  # fmt: skip
    assert states == dict.fromkeys(("queued", "running", "succeeded", "failed", "stopped"), 0)


def test_refusals_and_cache_are_counted(cluster: Cluster) -> None:
    p = cluster.prometheus
    failures = 'sum(ray_rayscribe_decode_failures_total{code="invalid_audio",path="upload"})'
    assert _one(p, failures) >= 1
    assert _one(p, 'sum(ray_rayscribe_limit_rejections_total{code="quota_exceeded"})') >= 1
    assert _one(p, 'sum(ray_rayscribe_result_cache_lookups_total{result="hit"})') >= 1
    assert _one(p, 'sum(ray_rayscribe_result_cache_lookups_total{result="miss"})') >= 1


def test_job_metrics_come_from_one_tracker(cluster: Cluster) -> None:
    p, sent = cluster.prometheus, cluster.sent
    assert _one(p, "sum(ray_rayscribe_job_attempts_total)") >= len(sent.jobs)
    if sent.interruptions:
        retries = 'sum(ray_rayscribe_job_retries_total{reason="interruption"})'
        assert _one(p, retries) >= 1
    deadline = time.monotonic() + 60  # the gauges follow the database within a sample or two
    while time.monotonic() < deadline:
        states = {
            s["metric"]["state"]: float(s["value"][1])
            for s in p.query("sum by (state) (ray_rayscribe_jobs)")
        }
        if states.get("succeeded") == len(sent.jobs):
            break
        time.sleep(2)
    assert states == {
        "queued": 0,
        "running": 0,
        "succeeded": len(sent.jobs),
        "failed": 0,
        "cancelled": 0,
    }
    assert _one(p, "max(ray_rayscribe_oldest_queued_job_age_seconds)") == 0
    assert 0 <= _one(p, "max(ray_rayscribe_tracker_heartbeat_age_seconds)") < 30


def test_disk_gauges_and_alert_rules(cluster: Cluster) -> None:
    p = cluster.prometheus
    for volume in ("spool", "audio"):
        free = _one(p, f'max(ray_rayscribe_disk_free_bytes{{volume="{volume}"}})')
        reserve = _one(p, f'max(ray_rayscribe_disk_reserve_bytes{{volume="{volume}"}})')
        assert 0 < reserve < free
    rules = p.rules()
    assert {rule["name"] for rule in rules} >= {
        "RayscribeWhisperQueueSaturated",
        "Rayscribe5xxRate",
        "RayscribeOldestQueuedJobTooOld",
        "RayscribeTrackerHeartbeatStale",
        "RayscribeReplicasBelowMinimum",
        "RayscribeDiskReserveLow",
    }
    assert [rule["name"] for rule in rules if rule["health"] != "ok"] == []
    firing = {r["name"] for r in rules if r["state"] == "firing"}
    assert firing <= {"Rayscribe5xxRate"}, firing  # the flood's 503s may trip only that


def test_dashboard_serve_page_shows_the_app_healthy(cluster: Cluster) -> None:
    head = cluster.head
    assert httpx.get(f"{head.dashboard_url}/api/serve/applications/").status_code == 401
    with chromium() as browser:
        browser.open(f"{head.dashboard_url}/#/serve")
        assert "Token" in browser.wait_for_text("Token", timeout_s=60)  # the token dialog
        browser.set_cookie(head.dashboard_url, "ray-authentication-token", head.token)
        browser.open(f"{head.dashboard_url}/#/serve")
        text = browser.wait_for_text(APP, *DEPLOYMENTS, "HEALTHY")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for name in (APP, *DEPLOYMENTS):
        assert name in lines, f"{name} not on the Serve page: {lines}"
        status = lines[lines.index(name) + 1]
        assert status == ("RUNNING" if name == APP else "HEALTHY"), (name, status)


def test_ray_logs_never_hold_the_token(cluster: Cluster) -> None:
    logs = cluster.head.temp_dir / "session_latest" / "logs"
    leaks = [
        p.name
        for p in logs.rglob("*")
        if p.is_file() and cluster.head.token.encode() in p.read_bytes()
    ]
    assert leaks == []
