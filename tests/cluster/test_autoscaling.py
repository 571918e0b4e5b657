"""Autoscaling shown: sustained load takes WhisperTranscriber from 1 to 2 replicas and, when
the load falls, back to 1, without a single failed request during either transition.

The app is serve_config.yaml with a test autoscaling config (short delays and look-back,
a target of 1 request per replica) and fractional CPUs: two Whisper replicas at 0.75
logical CPUs each (one CTranslate2 thread) plus the ingress and the tracker fill the
2-CPU budget of this machine exactly. Serve's handles and replicas push their load every
second instead of every ten (Ray's environment knobs, set for this cluster only).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.migrations import upgrade
from tests import serve_local as local
from tests.cluster.load import Load, ReplicaTimeline, statuses
from tests.cluster.ray_nodes import PATIENT_RAY
from tests.conftest import ENGLISH, report

pytestmark = pytest.mark.cluster

WHISPER = "WhisperTranscriber"
# Generous: a replica starts in seconds on a quiet machine, in minutes on one loaded 20x.
SCALE_TIMEOUT_S = 300
CALL_TIMEOUT_S = 300
PUSH_INTERVALS = {
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    **PATIENT_RAY,
}


def autoscaling_config(config: dict[str, Any]) -> None:
    (app,) = config["applications"]
    (whisper,) = [d for d in app["deployments"] if d["name"] == WHISPER]
    whisper["autoscaling_config"] = {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 2,
        "downscale_delay_s": 5,
        "look_back_period_s": 12,  # Ray wants it above its (deprecated) 10 s metrics interval
    }
    whisper["ray_actor_options"]["num_cpus"] = 0.75
    whisper["ray_actor_options"]["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="module")
def autoscaling_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("autoscale-data")
    upgrade(f"sqlite+aiosqlite:///{data_dir / 'rayscribe.db'}")
    settings = {"data_dir": str(data_dir), "whisper": {"cpu_threads": 1}}
    config = local.load_config(port=local.free_port(), settings=settings, edit=autoscaling_config)
    saved = {name: os.environ.get(name) for name in PUSH_INTERVALS}
    os.environ.update(PUSH_INTERVALS)  # inherited by the raylet and every worker it starts
    temp_dir = tempfile.mkdtemp(prefix="rs-scaling-")
    try:
        start_ray(num_cpus=2, temp_dir=temp_dir)
        yield local.deploy(config)
    finally:
        import ray

        if ray.is_initialized():  # serve.shutdown() would start a local Ray otherwise
            local.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_ray(num_cpus: int, temp_dir: str, attempts: int = 3) -> None:
    """`ray.init` of a local cluster, tried again when the raylet missed Ray's fixed 30 s
    start-up wait (it does on a machine loaded far past its cores)."""
    import ray

    for attempt in range(attempts):
        try:
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                namespace="serve",
                _temp_dir=temp_dir,  # not the shared /tmp/ray
            )
            return
        except Exception:
            ray.shutdown()
            if attempt == attempts - 1:
                raise


def test_whisper_scales_up_under_load_and_back_down(autoscaling_url: str) -> None:
    clip: Path = max(ENGLISH, key=lambda c: c.duration_s).path
    timeline = ReplicaTimeline(local.APP_NAME, WHISPER).start()
    load = Load(autoscaling_url, clip, clients=8, timeout_s=CALL_TIMEOUT_S)
    try:
        assert timeline.wait_for(lambda n: n == 1, 30), timeline.describe()
        load.start()
        scaled_up = timeline.wait_for(lambda n: n >= 2, SCALE_TIMEOUT_S)
        up_at = time.monotonic()
        if scaled_up:
            time.sleep(5)  # both replicas serve for a while
            load.scale_to(1)  # light load: the target says one replica, while requests run
            scaled_down = timeline.wait_for(lambda n: n == 1, SCALE_TIMEOUT_S)
            time.sleep(3)  # the last replica keeps serving after the other stopped
        else:
            scaled_down = False
    finally:
        outcomes = load.stop()
        timeline.stop()
    during_up = [o for o in outcomes if o.started <= up_at]
    figures = (
        f"autoscaling: replicas over time {timeline.describe()}; {len(outcomes)} requests "
        f"({len(during_up)} before the second replica ran), statuses {statuses(outcomes)}"
    )
    report(figures)
    print(figures)
    assert scaled_up, f"never scaled to 2 replicas: {figures}"
    assert scaled_down, f"never scaled back to 1 replica: {figures}"
    failed = [o for o in outcomes if o.status != 200]
    assert not failed, f"failed requests during the transitions: {failed[:5]}; {figures}"
    assert [n for _, n in timeline.changes if n > 0][:3] == [1, 2, 1], figures
