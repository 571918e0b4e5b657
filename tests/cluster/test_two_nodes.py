"""The app on a two-node Ray cluster, and the second node failing under load.

Two `ray start` nodes on this host (tests/cluster/ray_nodes.py): the head runs the proxy,
the ingress and the job tracker (custom resource `rayscribe_head`), and each node has one
`whisper_slot`, so the two Whisper replicas land one per node. Sync requests and jobs run
while the second node's raylet is killed (SIGKILL, by PID). Expected: sync callers get 200
or 503 with Retry-After, none hangs; every accepted job succeeds with one result row; and
within a minute every new request is served, by the replica on the head node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import ray

from services.migrations import upgrade
from tests import serve_local as local
from tests.cluster.load import Load, statuses
from tests.cluster.ray_nodes import RayNode
from tests.conftest import ENGLISH, report
from tests.servers import create_database, drop_database

pytestmark = pytest.mark.cluster

WHISPER = "WhisperTranscriber"
HEAD_RESOURCE = "rayscribe_head"
SLOT = "whisper_slot"
CALL_TIMEOUT_S = 60
JOBS = 8
RECOVERY_LIMIT_S = 60


def two_node_topology(config: dict[str, Any]) -> None:
    (app,) = config["applications"]
    for deployment in app["deployments"]:
        options = deployment["ray_actor_options"]
        if deployment["name"] == WHISPER:
            # Two fixed replicas. An entry's num_replicas wins over the code's defaults;
            # Serve refuses it next to an autoscaling_config, so the shipped one goes.
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = 2
            options["num_cpus"] = 1
            options["resources"] = {SLOT: 1}
            options["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] = "1"
        else:  # the ingress and the tracker stay on the head node
            options["resources"] = {HEAD_RESOURCE: 1}


@pytest.fixture(scope="module")
def database() -> Iterator[tuple[str, str]]:
    name, url = asyncio.run(create_database())
    upgrade(url)
    yield name, url
    asyncio.run(drop_database(name))


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, database: tuple[str, str]
) -> Iterator[tuple[str, RayNode, RayNode]]:
    head = RayNode(num_cpus=2, resources={HEAD_RESOURCE: 10, SLOT: 1})
    worker = RayNode(head_port=head.gcs_port, num_cpus=1, resources={SLOT: 1})
    settings = {
        "data_dir": str(tmp_path_factory.mktemp("two-nodes")),  # one disk: both nodes see it
        "database": {"url": database[1]},
        "cache": {"enabled": False},
        "whisper": {"cpu_threads": 1},
        "jobs": {"poll_interval_s": 0.5, "retry_backoff_s": 0.2, "max_concurrent": 4, "lease_s": 5},
    }
    config = local.load_config(port=local.free_port(), settings=settings, edit=two_node_topology)
    # Ray's token auth on (the default for `ray start`, from ~/.ray/auth_token): the nodes
    # get RAY_AUTH_MODE=token; this process must present it too, and Ray reads the mode once
    # into its cached config, which only its own helper refreshes.
    from ray._private.authentication.authentication_token_setup import _enable_token_auth

    _enable_token_auth()
    try:
        start_node(head)
        ray.init(address=head.address, namespace="serve", log_to_driver=False)
        start_node(worker)
        wait_for_nodes(2)
        yield local.deploy(config), head, worker
    finally:
        try:
            if ray.is_initialized():  # serve.shutdown() would start a local Ray otherwise
                local.shutdown()
        finally:
            worker.stop()
            head.stop()
            worker.remove()
            head.remove()


def start_node(node: RayNode, attempts: int = 3) -> None:
    """On a machine loaded far past its cores a node can abort at start (Ray's fixed 30 s
    wait for its raylet): start it again."""
    for _ in range(attempts):
        node.start({})
        if node.wait_started():
            return
        node.stop()
    raise RuntimeError(f"the Ray node did not start: {node.log_tail()}")


def wait_for_nodes(count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while len([n for n in ray.nodes() if n["Alive"]]) < count:
        assert time.monotonic() < deadline, f"{count} nodes never joined: {ray.nodes()}"
        time.sleep(0.5)


def whisper_nodes() -> list[str]:
    """The node id of each live Whisper replica actor (from the GCS: no dashboard needed)."""
    from ray._private import state

    return sorted(
        actor["Address"]["NodeID"]
        for actor in state.actors().values()  # type: ignore[no-untyped-call]
        if actor["State"] == "ALIVE" and f"#{WHISPER}#" in (actor.get("Name") or "")
    )


def head_node_id() -> str:
    (node,) = [n for n in ray.nodes() if n["Alive"] and HEAD_RESOURCE in n["Resources"]]
    return str(node["NodeID"])


async def submit_jobs(url: str, clips: list[Any]) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=CALL_TIMEOUT_S) as client:

        async def one(clip: Any) -> str:
            response = await client.post(
                "/v1/jobs",
                files={"file": (clip.name, clip.path.read_bytes())},
                data={"model": "whisper-1"},
            )
            assert response.status_code == 202, response.text
            return str(response.json()["id"])

        return list(await asyncio.gather(*(one(c) for c in clips)))


def wait_for_jobs(url: str, ids: list[str], timeout_s: float = 180) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    final: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=CALL_TIMEOUT_S) as client:
        while len(final) < len(ids) and time.monotonic() < deadline:
            for job_id in set(ids) - set(final):
                status = client.get(f"/v1/jobs/{job_id}").json()["status"]
                if status in ("succeeded", "failed", "cancelled"):
                    final[job_id] = status
            time.sleep(0.5)
    return final


async def result_rows(database_url: str, ids: list[str]) -> dict[str, int]:
    dsn = database_url.replace("postgresql+asyncpg", "postgresql")
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT job_id, count(*) AS n FROM job_results WHERE job_id = ANY($1::text[]) "
            "GROUP BY job_id",
            ids,
        )
    finally:
        await connection.close()
    return {row["job_id"]: row["n"] for row in rows}


def test_second_node_fails_under_load(
    cluster: tuple[str, RayNode, RayNode], database: tuple[str, str]
) -> None:
    url, _head, worker = cluster
    head_id = head_node_id()
    placed = whisper_nodes()
    assert len(set(placed)) == 2, f"one replica per node: {placed}"

    clip = ENGLISH[1]  # 5 s: many requests in flight, some on the failing node
    load = Load(url, clip.path, clients=4, timeout_s=CALL_TIMEOUT_S).start()
    try:
        job_ids = asyncio.run(submit_jobs(url, ENGLISH[:JOBS]))
        deadline = time.monotonic() + 120
        while sum(o.status == 200 for o in load.outcomes) < 4:  # both replicas busy
            assert time.monotonic() < deadline, f"no load served: {statuses(load.outcomes)}"
            time.sleep(0.5)
        killed_at = time.monotonic()
        worker.kill_raylet()
        time.sleep(25)  # the load runs on through the failure
    finally:
        outcomes = load.stop()

    # Then every new request is served, by the replica on the head node: probes until three
    # in a row answer 200. Recovery: when the last refused or failed request ended.
    probes: list[tuple[float, int]] = []
    with httpx.Client(base_url=url, timeout=CALL_TIMEOUT_S) as client:
        deadline = time.monotonic() + 4 * RECOVERY_LIMIT_S
        while time.monotonic() < deadline:
            response = client.post(
                "/v1/audio/transcriptions",
                files={"file": (clip.name, clip.path.read_bytes())},
                data={"model": "whisper-1"},
            )
            probes.append((time.monotonic() - killed_at, response.status_code))
            assert response.status_code in (200, 503), response.text
            assert response.status_code == 200 or response.headers.get("retry-after")
            if len(probes) >= 3 and all(status == 200 for _, status in probes[-3:]):
                break
    after = [o for o in outcomes if o.started > killed_at]
    failures = [o.started + o.elapsed_s - killed_at for o in outcomes if o.status != 200]
    failures += [ended for ended, status in probes if status != 200]
    recovery_s = max([f for f in failures if f > 0], default=0.0)
    final = wait_for_jobs(url, job_ids)
    rows = asyncio.run(result_rows(database[1], job_ids))

    figures = (
        f"two nodes: {len(outcomes)} sync requests under load ({len(after)} after the kill), "
        f"statuses {statuses(outcomes)}, slowest {max(o.elapsed_s for o in outcomes):.1f} s; "
        f"last refusal ended {recovery_s:.1f} s after the kill; probes (s after kill, status) "
        f"{[(round(t, 1), status) for t, status in probes]}; "
        f"jobs {sorted(final.values())}"
    )
    report(figures)
    print(figures)
    bad = [o for o in outcomes if o.status not in (200, 503)]
    assert not bad, f"only 200 or 503: {bad[:5]}; {figures}"
    no_retry_after = [o for o in outcomes if o.status == 503 and not o.retry_after]
    assert not no_retry_after, f"503 without Retry-After: {no_retry_after[:3]}"
    assert recovery_s < RECOVERY_LIMIT_S, figures
    assert [status for _, status in probes[-3:]] == [200] * 3, figures
    assert whisper_nodes() == [head_id], "the replica left is the head node's"
    assert final == dict.fromkeys(job_ids, "succeeded"), figures
    assert rows == dict.fromkeys(job_ids, 1), "exactly one result row per job"
