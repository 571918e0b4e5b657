"""Capacity on paper: the measured audio-seconds per second of one Whisper replica, turned
into replicas and nodes for a daily load.

    python scripts/capacity.py                          # the README's table (10,000 h a day)
    python scripts/capacity.py --audio-hours-per-day 2500 --peak-to-average 3

Rates come from the committed benchmark results (benchmarks/results/throughput.json and
long_job.json: one CPU replica, 2 vCPUs, 2 CTranslate2 threads, tiny.en int8); rerun
`make bench` / `make bench-long` on the target hardware and this table follows. The README
holds the output for the defaults between `capacity-table` markers; tests/ops checks it.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DAY_S = 24 * 3600


@dataclass(frozen=True)
class Assumptions:
    audio_hours_per_day: float = 10_000
    peak_to_average: float = 2.0
    """Busiest hour over the day's mean (a day's audio arriving mostly in business hours)."""
    utilisation: float = 0.7
    """Share of a replica's measured rate planned for: room for autoscaling lag and a lost node."""
    replica_vcpus: int = 2
    """The measured replica: num_cpus 2 and 2 CTranslate2 threads, as cluster/serve/uat.yaml."""
    node_vcpus: int = 16
    node_reserved_vcpus: int = 2
    """Left on each node for the proxy, ingress, job tracker and raylet."""

    @property
    def replicas_per_node(self) -> int:
        return (self.node_vcpus - self.node_reserved_vcpus) // self.replica_vcpus


def measured_rates() -> list[tuple[str, float]]:
    """(workload, audio-s per wall-s of one replica) from the committed results."""
    throughput = json.loads((RESULTS / "throughput.json").read_text())
    long_job = json.loads((RESULTS / "long_job.json").read_text())
    minutes = round(long_job["audio_s"] / 60)
    return [
        ("short requests, 16 concurrent, synchronous (`c16`)", throughput["throughput"]["c16"]),
        (f"{minutes}-minute recordings as jobs (`long_job`)", long_job["job_audio_s_per_s"]),
    ]


def table(assumptions: Assumptions) -> str:
    mean = assumptions.audio_hours_per_day * 3600 / DAY_S
    peak = mean * assumptions.peak_to_average
    lines = [
        f"Load: {assumptions.audio_hours_per_day:,.0f} audio-hours a day = {mean:.0f} audio-s "
        f"per s on average, {peak:.0f} at peak (x{assumptions.peak_to_average:g}); planned at "
        f"{assumptions.utilisation:.0%} of the measured rate; {assumptions.replica_vcpus} vCPUs "
        f"per replica, {assumptions.replicas_per_node} replicas per {assumptions.node_vcpus}-vCPU "
        "node.",
        "",
        "| Workload (one CPU replica, tiny.en int8) | audio-s per s per replica | replicas at "
        "peak | vCPUs at peak | nodes at peak | replicas on average |",
        "|---|---|---|---|---|---|",
    ]
    for workload, rate in measured_rates():
        usable = rate * assumptions.utilisation
        at_peak = math.ceil(peak / usable)
        nodes = math.ceil(at_peak / assumptions.replicas_per_node)
        lines.append(
            f"| {workload} | {rate:.1f} | {at_peak} | {at_peak * assumptions.replica_vcpus} | "
            f"{nodes} | {math.ceil(mean / usable)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Assumptions()
    parser.add_argument("--audio-hours-per-day", type=float, default=defaults.audio_hours_per_day)
    parser.add_argument("--peak-to-average", type=float, default=defaults.peak_to_average)
    parser.add_argument("--utilisation", type=float, default=defaults.utilisation)
    parser.add_argument("--node-vcpus", type=int, default=defaults.node_vcpus)
    args = parser.parse_args()
    print(
        table(
            Assumptions(
                audio_hours_per_day=args.audio_hours_per_day,
                peak_to_average=args.peak_to_average,
                utilisation=args.utilisation,
                node_vcpus=args.node_vcpus,
            )
        )
    )


if __name__ == "__main__":
    main()
