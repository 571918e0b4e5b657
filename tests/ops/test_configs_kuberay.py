"""cluster/kuberay/rayservice.yaml: valid against the RayService CRD KubeRay publishes
(committed in cluster/kuberay/crd/, see SOURCE.md), its embedded Serve config is
cluster/serve/prod.yaml and passes Ray's schema, and what the Serve config asks of the
cluster (GPUs, CPUs, replicas) fits the worker groups the manifest gives it.

Kubernetes accepts unknown fields in a custom resource and drops them (kubectl warns, or
refuses with --validate=strict); the schema is closed here the way strict validation
does, so a misspelt field fails the test instead of vanishing in the cluster.
"""

from __future__ import annotations

import copy
import hashlib
import re
from functools import cache
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from tests.ops.test_configs import ENV_CONFIGS, app_of, deployments_of, load

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"
MANIFEST = KUBERAY / "rayservice.yaml"
CRD = KUBERAY / "crd" / "ray.io_rayservices.yaml"


@cache
def _crd() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # 1 MB: the C loader takes 0.3 s
    return cast(dict[str, Any], yaml.load(CRD.read_text(), Loader=loader))


def _close(node: Any) -> None:
    """Refuse unknown fields wherever the schema lists the known ones (strict validation)."""
    if isinstance(node, dict):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for child in node.values():
            _close(child)
    elif isinstance(node, list):
        for child in node:
            _close(child)


@cache
def _validator() -> jsonschema.Draft7Validator:
    (v1,) = [v for v in _crd()["spec"]["versions"] if v["name"] == "v1"]
    assert v1["served"]
    assert v1["storage"]
    schema = copy.deepcopy(v1["schema"]["openAPIV3Schema"])
    _close(schema)
    return jsonschema.Draft7Validator(schema)


def _errors(manifest: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in _validator().iter_errors(manifest)
    ]


def _manifest() -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load(MANIFEST.read_text()))


def _groups(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"]}
    groups.update({g["groupName"]: g for g in cluster["workerGroupSpecs"]})
    return groups


def _ray_container(group: dict[str, Any]) -> dict[str, Any]:
    return cast(dict[str, Any], group["template"]["spec"]["containers"][0])


def _cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_the_crd_is_the_release_its_note_names() -> None:
    recorded = re.search(r"sha256 \| `([0-9a-f]{64})`", (CRD.parent / "SOURCE.md").read_text())
    assert recorded is not None
    assert hashlib.sha256(CRD.read_bytes()).hexdigest() == recorded.group(1)
    assert _crd()["spec"]["names"]["kind"] == "RayService"


def test_the_manifest_is_a_valid_rayservice() -> None:
    manifest = _manifest()
    assert manifest["apiVersion"] == f"{_crd()['spec']['group']}/v1"
    assert manifest["kind"] == "RayService"
    assert _errors(manifest) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        # A misspelt probe would leave KubeRay's default probes in place, silently.
        (
            lambda c: c["headGroupSpec"]["template"]["spec"]["containers"][0].update(
                readinesProbe={}
            ),
            "'readinesProbe' was unexpected",
        ),
        (lambda c: c["workerGroupSpecs"][1].update(minReplicas="2"), "is not of type 'integer'"),
        (lambda c: c["workerGroupSpecs"][0].pop("groupName"), "'groupName' is a required"),
        (lambda c: c["authOptions"].update(mode="on"), "is not one of"),
    ],
)
def test_the_schema_check_catches_what_kubernetes_would_drop_or_refuse(
    mutate: Any, expected: str
) -> None:
    manifest = _manifest()
    mutate(manifest["spec"]["rayClusterConfig"])
    assert any(expected in error for error in _errors(manifest)), _errors(manifest)


def test_the_embedded_serve_config_is_prod_and_passes_rays_schema() -> None:
    embedded = yaml.safe_load(_manifest()["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    assert embedded == load(ENV_CONFIGS["prod"]), (
        "serveConfigV2 must be cluster/serve/prod.yaml as it is: paste the file again"
    )


def test_head_cpu_and_gpu_groups_run_the_matching_images() -> None:
    manifest = _manifest()
    assert manifest["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
    groups = _groups(manifest)
    assert set(groups) == {"head", "cpu", "gpu"}
    images = {name: _ray_container(group)["image"] for name, group in groups.items()}
    assert images["head"] == images["cpu"]
    assert images["cpu"].endswith("-cpu")
    assert images["gpu"] == images["cpu"].removesuffix("-cpu") + "-gpu"
    # No Serve replica on the head: losing a replica's node never takes the GCS with it.
    assert groups["head"]["rayStartParams"]["num-cpus"] == "0"
    # Migrations run before the head starts, in the environment the Serve config names.
    (migrate,) = groups["head"]["template"]["spec"]["initContainers"]
    assert migrate["image"] == images["head"]
    assert migrate["command"][-3:] == ["services.migrations", "upgrade", "head"]
    env = {e["name"]: e["value"] for e in migrate["env"]}
    prod_env = app_of(load(ENV_CONFIGS["prod"]))["runtime_env"]["env_vars"]["RAYSCRIBE_ENV"]
    assert env["RAYSCRIBE_ENV"] == prod_env


def test_every_ray_container_has_probes_resources_and_the_secrets() -> None:
    serve_port = load(ENV_CONFIGS["prod"])["http_options"]["port"]
    for name, group in _groups(_manifest()).items():
        spec = group["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec.get("initContainers", []) + spec["containers"]:
            resources = container["resources"]
            assert resources["requests"] == resources["limits"], f"{name}: guaranteed QoS"
            assert {"cpu", "memory"} <= set(resources["limits"])
            assert {"secretRef": {"name": "rayscribe-secrets"}} in container["envFrom"]
        ray_container = _ray_container(group)
        assert ray_container["livenessProbe"]["httpGet"]["path"] == "/api/healthz"
        readiness = ray_container["readinessProbe"]["httpGet"]
        if name != "head":  # KubeRay checks the head's proxy itself
            assert readiness == {"path": "/-/healthz", "port": serve_port}
        ports = {p["name"]: p["containerPort"] for p in ray_container["ports"]}
        assert ports["serve"] == serve_port


def test_the_serve_config_fits_the_worker_groups() -> None:
    groups = _groups(_manifest())
    deployments = deployments_of(load(ENV_CONFIGS["prod"]))

    def pod(group: str) -> tuple[float, int]:
        limits = _ray_container(groups[group])["resources"]["limits"]
        return _cpus(limits["cpu"]), int(limits.get("nvidia.com/gpu", 0))

    whisper = deployments["WhisperTranscriber"]
    gpu_cpus, gpus = pod("gpu")
    per_pod = gpus // whisper["ray_actor_options"]["num_gpus"]
    assert per_pod >= 1
    assert whisper["ray_actor_options"]["num_cpus"] * per_pod <= gpu_cpus
    assert groups["gpu"]["maxReplicas"] * per_pod >= whisper["autoscaling_config"]["max_replicas"]
    assert groups["gpu"]["minReplicas"] * per_pod >= whisper["autoscaling_config"]["min_replicas"]
    cpu_cpus, cpu_gpus = pod("cpu")
    assert cpu_gpus == 0
    tracker = deployments["JobTracker"]
    assert groups["cpu"]["minReplicas"] >= tracker["num_replicas"] / tracker.get(
        "max_replicas_per_node", tracker["num_replicas"]
    ), "the trackers' spread needs that many CPU nodes at least"
    ingress = deployments["Ingress"]
    needed = (
        ingress["autoscaling_config"]["max_replicas"] * ingress["ray_actor_options"]["num_cpus"]
        + tracker["num_replicas"] * tracker["ray_actor_options"]["num_cpus"]
    )
    assert needed <= groups["cpu"]["maxReplicas"] * cpu_cpus
