"""A real Prometheus (Debian's `prometheus`) for tests, on a free loopback port.

It discovers Ray's metrics exports through the service-discovery file the dashboard head
writes (the way Ray's docs set Prometheus up), scrapes every 2 s, loads the alert rules of
cluster/monitoring, and is stopped by its PID.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.serve_local import ROOT, free_port

ALERTS = ROOT / "cluster" / "monitoring" / "alerts.yaml"


class Prometheus:
    def __init__(self, service_discovery_file: Path, workdir: Path) -> None:
        binary = shutil.which("prometheus")
        assert binary, "Prometheus is needed: apt-get install -y prometheus"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "ray",
                    "file_sd_configs": [
                        {"files": [str(service_discovery_file)], "refresh_interval": "5s"}
                    ],
                }
            ],
        }
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError("Prometheus never became ready")

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=30)
        answer.raise_for_status()
        body = answer.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def values(self, promql: str) -> list[float]:
        return [float(sample["value"][1]) for sample in self.query(promql)]

    def names(self) -> set[str]:
        answer = httpx.get(f"{self.url}/api/v1/label/__name__/values", timeout=30)
        answer.raise_for_status()
        return set(answer.json()["data"])

    def rules(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/rules", timeout=30)
        answer.raise_for_status()
        return [rule for group in answer.json()["data"]["groups"] for rule in group["rules"]]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()
