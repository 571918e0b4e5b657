"""The metric catalog, the README's table and the Grafana dashboard agree.

`services.core.metrics.CATALOG` declares every metric we define; the README lists each of
them (with its type and labels), the Serve metrics we reuse instead of redefining, and the
bulk job's own; the dashboard's queries name only those, and show every one of ours.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from services.core.metrics import CATALOG

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "cluster" / "monitoring" / "grafana" / "rayscribe.json"
README = ROOT / "README.md"

SERVE_REUSED = {
    "ray_serve_num_http_requests_total",
    "ray_serve_http_request_latency_ms",
    "ray_serve_deployment_request_counter_total",
    "ray_serve_deployment_processing_latency_ms",
    "ray_serve_deployment_queued_queries",
    "ray_serve_replica_processing_queries",
    "ray_serve_deployment_replica_healthy",
    "ray_serve_autoscaling_target_replicas",
    "ray_serve_batch_queue_length",
    "ray_serve_batch_wait_time_ms",
    "ray_serve_batch_utilization_percent",
    "ray_serve_batches_processed_total",
}
"""What Serve exports already (requests and latency per deployment, queues, replicas,
batches), listed in the README rather than defined again."""

BULK = {
    "rayscribe_bulk_rows_total": ("counter", ("status",)),
    "rayscribe_bulk_audio_seconds_total": ("counter", ()),
}
"""Written by the bulk Ray job (`cluster/bulk`, ray.util.metrics)."""

HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def _ours() -> dict[str, tuple[str, tuple[str, ...]]]:
    specs = {f"ray_{s.name}": (s.kind, s.labels) for s in CATALOG}
    return specs | {f"ray_{name}": spec for name, spec in BULK.items()}


def _base(name: str, known: set[str]) -> str:
    for suffix in HISTOGRAM_SERIES:
        if name.endswith(suffix) and name[: -len(suffix)] in known:
            return name[: -len(suffix)]
    return name


def _dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    known = set(_ours()) | SERVE_REUSED
    return {_base(name, known) for expr in exprs for name in re.findall(r"\bray_[a-z0-9_]+", expr)}


def test_every_name_is_prefixed_and_labels_are_small() -> None:
    for spec in CATALOG:
        assert spec.name.startswith("rayscribe_"), spec.name
        assert spec.kind != "counter" or spec.name.endswith("_total"), spec.name
        assert not {"job_id", "user", "owner", "request_id"} & set(spec.labels), spec.name
        assert spec.kind != "histogram" or list(spec.boundaries) == sorted(spec.boundaries)
    assert len({spec.name for spec in CATALOG}) == len(CATALOG)


def test_the_dashboard_is_importable_and_names_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "rayscribe"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "application"} <= variables
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    used = _dashboard_metrics()
    assert used - set(_ours()) - SERVE_REUSED == set(), "queries name metrics nobody exports"
    assert set(_ours()) - used == set(), "metrics the dashboard does not show"


def test_the_readme_lists_every_metric_with_type_and_labels() -> None:
    rows = {
        match.group(1): line
        for line in README.read_text().splitlines()
        if (match := re.match(r"\| `(ray_[a-z0-9_]+)` \|", line))
    }
    for name, (kind, labels) in _ours().items():
        assert name in rows, f"{name} is not in the README's metrics table"
        assert f"| {kind} |" in rows[name], rows[name]
        for label in labels:
            assert f"`{label}`" in rows[name], (name, label)
    missing_serve = SERVE_REUSED - set(rows)
    assert missing_serve == set(), "Serve metrics we reuse belong in the table too"
