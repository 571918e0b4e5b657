"""The per-environment Serve configs (cluster/serve/uat.yaml, prod.yaml) next to the dev one
(serve_config.yaml): each passes Ray's own schema, and each builds the `Settings` of the
environment it names once the secrets a node carries are in the environment.

No Ray is started: Ray's schema classes are plain pydantic models.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import RayActorOptionsSchema, ServeDeploySchema

from deployments.transcriber import BatchingConfig
from services.core.settings import Settings
from services.limits.bind import PublicBindRefusedError, bind_host, check_bind

ROOT = Path(__file__).resolve().parents[2]
DEV_CONFIG = ROOT / "serve_config.yaml"
ENV_CONFIGS = {name: ROOT / "cluster" / "serve" / f"{name}.yaml" for name in ("uat", "prod")}
ALL_CONFIGS = {"dev": DEV_CONFIG, **ENV_CONFIGS}

# What a node of a uat/prod cluster carries in its environment (from a Kubernetes Secret),
# never in the config: the files' headers list exactly these.
NODE_SECRETS = {
    "RAYSCRIBE_DATABASE__URL": "postgresql+asyncpg://rayscribe:s3cret-pw@db.internal:5432/rayscribe",
    "RAYSCRIBE_REDIS__URL": "redis://:s3cret-pw@redis.internal:6379/0",
    "RAYSCRIBE_AUTH__ISSUER": "https://sso.example.com/realms/acme",
    "RAYSCRIBE_AUTH__AUDIENCE": "rayscribe-api",
    "RAYSCRIBE_STORAGE__S3_ENDPOINT_URL": "http://minio.internal:9000",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "s3cret-key",
    "AWS_REGION": "eu-west-1",
}


def load(path: Path) -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load(path.read_text()))


def app_of(config: dict[str, Any]) -> dict[str, Any]:
    (app,) = config["applications"]
    return cast(dict[str, Any], app)


def deployments_of(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in app_of(config)["deployments"]}


def settings_for(config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    """The Settings `build_app` makes on a node: args.settings over the node's environment
    plus the application's runtime_env (which Ray workers get on top of the node's)."""
    for name in list(os.environ):
        if name.startswith("RAYSCRIBE_") or name.startswith("AWS_"):
            monkeypatch.delenv(name)
    app = app_of(config)
    for name, value in {**env, **app.get("runtime_env", {}).get("env_vars", {})}.items():
        monkeypatch.setenv(name, str(value))
    return Settings(_env_file=None, **(app.get("args") or {}).get("settings", {}))  # type: ignore[call-arg]


@pytest.mark.parametrize("env", list(ALL_CONFIGS))
def test_each_config_passes_rays_schema_and_ours(env: str) -> None:
    config = load(ALL_CONFIGS[env])
    schema = ServeDeploySchema.model_validate(config)
    assert [a.import_path for a in schema.applications] == ["deployments.app:build_app"]
    # ServeDeploySchema keeps autoscaling_config as a dict and ignores unknown actor
    # options (`num_gpu: 1` would pass and mean nothing): check both the way Serve will.
    for name, deployment in deployments_of(config).items():
        if "autoscaling_config" in deployment:
            AutoscalingConfig.model_validate(deployment["autoscaling_config"])
        unknown = set(deployment.get("ray_actor_options", {})) - set(
            RayActorOptionsSchema.model_fields
        )
        assert not unknown, f"{env}: {name} has unknown ray_actor_options {unknown}"
    assert config["logging_config"]["encoding"] == "JSON", "logs are JSON lines everywhere"


@pytest.mark.parametrize("env", list(ENV_CONFIGS))
def test_env_configs_deploy_the_same_deployments_as_dev(env: str) -> None:
    """A deployment renamed in the code and serve_config.yaml must be renamed here too, or
    Serve would silently run it with defaults."""
    assert set(deployments_of(load(ENV_CONFIGS[env]))) == set(deployments_of(load(DEV_CONFIG)))


@pytest.mark.parametrize("env", list(ENV_CONFIGS))
def test_settings_of_the_env_the_config_names(env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(load(ENV_CONFIGS[env]), monkeypatch, **NODE_SECRETS)
    assert settings.env.value == env
    assert settings.auth.mode is not None
    assert settings.auth.mode.value == "jwt"
    assert settings.storage.backend == "s3"
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.redis.url is not None
    assert settings.data_dir.is_absolute()
    # Models are baked into the image there, never joined at start into the data volume.
    assert settings.whisper.cache_dir == Path("/opt/rayscribe/models")


@pytest.mark.parametrize("env", list(ENV_CONFIGS))
def test_no_secret_in_the_config_files(env: str) -> None:
    config = load(ENV_CONFIGS[env])
    env_vars = app_of(config)["runtime_env"]["env_vars"]
    assert not set(env_vars) & set(NODE_SECRETS), "secrets come from the node, not the file"
    assert not any("@" in str(value) for value in env_vars.values()), "credentials in a URL"
    assert app_of(config)["args"]["settings"] == {}, "settings that differ go in env_vars"


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("RAYSCRIBE_DATABASE__URL", r"database\.url must be set"),
        ("RAYSCRIBE_AUTH__ISSUER", r"auth\.mode=jwt needs auth\.issuer"),
    ],
)
@pytest.mark.parametrize("env", list(ENV_CONFIGS))
def test_a_node_without_its_secrets_refuses_to_start(
    env: str, missing: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {k: v for k, v in NODE_SECRETS.items() if k != missing}
    with pytest.raises(ValueError, match=message):
        settings_for(load(ENV_CONFIGS[env]), monkeypatch, **secrets)


@pytest.mark.parametrize("env", list(ENV_CONFIGS))
def test_the_public_bind_passes_the_guard_only_with_auth(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load(ENV_CONFIGS[env])
    settings = settings_for(config, monkeypatch, **NODE_SECRETS)
    host = bind_host(config, settings)
    assert host == "0.0.0.0"
    assert check_bind(host, settings) is None
    config_off = load(ENV_CONFIGS[env])
    app_of(config_off)["runtime_env"]["env_vars"]["RAYSCRIBE_AUTH__MODE"] = "off"
    with pytest.raises(ValueError, match=r"auth\.mode=off is allowed in dev only"):
        settings_for(config_off, monkeypatch, **NODE_SECRETS)
    with pytest.raises(PublicBindRefusedError):
        check_bind(host, settings.model_copy(update={"auth": None}))


@pytest.mark.parametrize("env", list(ENV_CONFIGS))
def test_batches_can_fill_within_max_ongoing_requests(env: str) -> None:
    """Ray's rule, as tests/unit checks it for serve_config.yaml."""
    whisper = deployments_of(load(ENV_CONFIGS[env]))["WhisperTranscriber"]
    batching = BatchingConfig.from_user_config(whisper["user_config"])
    assert batching.max_ongoing_requests_needed <= whisper["max_ongoing_requests"]
    assert set(whisper["user_config"]) == set(BatchingConfig.model_fields)


@pytest.mark.parametrize("env", list(ENV_CONFIGS))
def test_threads_and_devices_agree_with_the_actor_options(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load(ENV_CONFIGS[env])
    settings = settings_for(config, monkeypatch, **NODE_SECRETS)
    options = deployments_of(config)["WhisperTranscriber"]["ray_actor_options"]
    # Ray sets OMP_NUM_THREADS from num_cpus otherwise; the replica warns when they differ.
    assert options["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == str(
        settings.whisper.cpu_threads
    )
    assert options["num_cpus"] >= settings.whisper.cpu_threads * settings.whisper.num_workers
    on_gpu = options.get("num_gpus", 0) >= 1
    assert on_gpu == (settings.whisper.device == "cuda"), "num_gpus and whisper.device agree"
    if on_gpu:
        assert settings.whisper.compute_type in ("float16", "int8_float16", "bfloat16")


def test_prod_runs_whisper_on_gpus_and_uat_on_cpus() -> None:
    prod = deployments_of(load(ENV_CONFIGS["prod"]))["WhisperTranscriber"]
    uat = deployments_of(load(ENV_CONFIGS["uat"]))["WhisperTranscriber"]
    assert prod["ray_actor_options"]["num_gpus"] == 1
    assert uat["ray_actor_options"]["num_gpus"] == 0


@pytest.mark.parametrize("env", list(ENV_CONFIGS))
def test_more_replicas_than_dev_and_room_to_scale(env: str) -> None:
    dev = deployments_of(load(DEV_CONFIG))
    ours = deployments_of(load(ENV_CONFIGS[env]))
    for name in ("Ingress", "WhisperTranscriber"):
        scaling = AutoscalingConfig.model_validate(ours[name]["autoscaling_config"])
        assert scaling.min_replicas >= 1
        assert scaling.max_replicas > scaling.min_replicas
        dev_max = dev[name].get("autoscaling_config", {}).get("max_replicas") or dev[name].get(
            "num_replicas", 1
        )
        assert scaling.max_replicas > dev_max, f"{env}: {name} scales no further than dev"
    assert ours["Ingress"]["autoscaling_config"]["min_replicas"] >= 2, "no single ingress"
    assert ours["JobTracker"]["num_replicas"] >= 2, "a lost node never stops the jobs"
