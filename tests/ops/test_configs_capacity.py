"""The README's "Capacity on paper" table is what scripts/capacity.py computes from the
committed benchmark results, for a replica of the shape the UAT config deploys."""

from __future__ import annotations

import json
import math
from pathlib import Path

from scripts.capacity import DAY_S, Assumptions, measured_rates, table
from tests.ops.test_configs import ENV_CONFIGS, app_of, deployments_of, load

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- capacity-table:start -->", "<!-- capacity-table:end -->"


def test_readme_capacity_table_matches_the_measured_results() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(START) + len(START) : readme.index(END)]
    assert block.strip() == table(Assumptions()), (
        "README capacity table is stale (a new benchmark result?): paste "
        "`python scripts/capacity.py` into it"
    )


def test_the_planned_replicas_carry_the_peak() -> None:
    assumptions = Assumptions()
    peak = assumptions.audio_hours_per_day * 3600 / DAY_S * assumptions.peak_to_average
    rows = table(assumptions).splitlines()[4:]
    for (_, rate), row in zip(measured_rates(), rows, strict=True):
        replicas = int(row.split("|")[3])
        assert replicas * rate * assumptions.utilisation >= peak
        assert (replicas - 1) * rate * assumptions.utilisation < peak
        nodes = int(row.split("|")[5])
        assert nodes == math.ceil(replicas / assumptions.replicas_per_node)


def test_the_replica_planned_is_the_replica_measured_and_deployed_in_uat() -> None:
    config = load(ENV_CONFIGS["uat"])
    whisper = deployments_of(config)["WhisperTranscriber"]["ray_actor_options"]
    env_vars = app_of(config)["runtime_env"]["env_vars"]
    assert whisper["num_cpus"] == Assumptions().replica_vcpus
    assert int(env_vars["RAYSCRIBE_WHISPER__CPU_THREADS"]) == Assumptions().replica_vcpus
    assert env_vars["RAYSCRIBE_WHISPER__COMPUTE_TYPE"] == "int8"
    assert "RAYSCRIBE_WHISPER__MODEL" not in env_vars, "the benchmarks measure tiny.en"
    measured = json.loads((ROOT / "benchmarks" / "results" / "throughput.json").read_text())
    assert (measured["model"], measured["cpu_threads"]) == ("tiny.en", Assumptions().replica_vcpus)
