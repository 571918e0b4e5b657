"""The alert rules load in Prometheus's own checker, and each one fires on synthetic series
(`cluster/monitoring/alerts_test.yaml`, run by `promtool test rules`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "cluster" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
ALERTS_TEST = MONITORING / "alerts_test.yaml"
REQUIRED = {
    "RayscribeWhisperQueueSaturated",
    "Rayscribe5xxRate",
    "RayscribeOldestQueuedJobTooOld",
    "RayscribeTrackerHeartbeatStale",
    "RayscribeReplicasBelowMinimum",
    "RayscribeDiskReserveLow",
}


def _promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed: apt-get install -y prometheus"
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _alerts(path: Path) -> list[dict[str, object]]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_rules_pass_promtool_check() -> None:
    done = _promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


def test_every_alert_fires_in_the_rule_tests() -> None:
    assert {rule["alert"] for rule in _alerts(ALERTS)} == REQUIRED
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == REQUIRED
    done = _promtool("test", "rules", ALERTS_TEST.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """The rule tests can fail: one expected label changed makes promtool say so."""
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    text = ALERTS_TEST.read_text().replace(
        "severity: critical, application: rayscribe}",
        "severity: warning, application: rayscribe}",
        1,
    )
    (tmp_path / ALERTS_TEST.name).write_text(text)
    done = _promtool("test", "rules", ALERTS_TEST.name, cwd=tmp_path)
    assert done.returncode != 0
    assert "FAILED" in done.stdout + done.stderr
