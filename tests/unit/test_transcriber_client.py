"""The Serve edge pieces that need no cluster: failure mapping and the batching config."""

from typing import Any, cast

import numpy as np
import pytest
import yaml
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError

from cluster.whisper_client import ServeTranscriber
from deployments.transcriber import BatchingConfig, WhisperTranscriber
from services.core.errors import OverloadedError, UnavailableError
from services.core.settings import Settings
from services.transcription.domain import TranscriptionOptions
from tests.serve_local import SERVE_CONFIG


class _FailingMethod:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def remote(self, *args: Any) -> Any:
        raise self.error


class _FailingStream:
    """A streamed response that yields one event, then fails; records its cancel."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.cancelled = False

    def __aiter__(self) -> "_FailingStream":
        self._sent = False
        return self

    async def __anext__(self) -> str:
        if self._sent:
            raise self.error
        self._sent = True
        return "first"

    def cancel(self) -> None:
        self.cancelled = True


class _StreamMethod:
    def __init__(self, stream: _FailingStream) -> None:
        self.stream = stream

    def remote(self, *args: Any) -> _FailingStream:
        return self.stream


class _Handle:
    """Stands in for a DeploymentHandle whose calls fail the way Serve's do."""

    def __init__(self, error: Exception) -> None:
        self.transcribe = _FailingMethod(error)
        self.detect_languages = _FailingMethod(error)
        self.transcribe_stream = _StreamMethod(_FailingStream(error))

    def options(self, **_: Any) -> "_Handle":
        return self


async def test_backpressure_becomes_503_with_retry_after() -> None:
    client = ServeTranscriber(_Handle(BackPressureError(128, 128)))  # type: ignore[arg-type]
    with pytest.raises(OverloadedError) as caught:
        await client.transcribe(np.zeros(10, dtype=np.float32), TranscriptionOptions())
    assert caught.value.status_code == 503
    assert caught.value.headers["Retry-After"] == "2"


async def test_a_dead_replica_becomes_503() -> None:
    client = ServeTranscriber(_Handle(ActorDiedError()))  # type: ignore[arg-type]
    with pytest.raises(UnavailableError) as caught:
        await client.transcribe(np.zeros(10, dtype=np.float32), TranscriptionOptions())
    assert caught.value.status_code == 503


async def _drain(client: ServeTranscriber, into: list[Any]) -> None:
    stream = client.transcribe_stream(np.zeros(10, dtype=np.float32), TranscriptionOptions())
    async for event in stream:
        into.append(event)


async def test_every_call_maps_serve_failures_the_same_way() -> None:
    """Language detection and the stream (after its first event) map both failures too,
    and the stream is cancelled on the replica when it fails."""
    audio = np.zeros(10, dtype=np.float32)
    for error, expected in (
        (BackPressureError(128, 128), OverloadedError),
        (ActorDiedError(), UnavailableError),
    ):
        handle = _Handle(error)
        client = ServeTranscriber(handle)  # type: ignore[arg-type]
        with pytest.raises(expected):
            await client.detect_languages(audio)
        got: list[Any] = []
        with pytest.raises(expected) as caught:
            await _drain(client, got)
        assert got == ["first"]
        assert caught.value.status_code == 503
        assert handle.transcribe_stream.stream.cancelled


def _whisper_deployment() -> dict[str, Any]:
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    (app,) = config["applications"]
    (deployment,) = [d for d in app["deployments"] if d["name"] == "WhisperTranscriber"]
    return cast(dict[str, Any], deployment)


def test_serve_config_batches_can_fill_within_max_ongoing_requests() -> None:
    """Ray's rule, checked on the shipped file: batch size x concurrent batches must fit in
    max_ongoing_requests, or batches never fill (and Ray warns at every start)."""
    deployment = _whisper_deployment()
    config = BatchingConfig.from_user_config(deployment["user_config"])
    assert config.max_ongoing_requests_needed == (
        config.max_batch_windows * config.max_concurrent_batches
    )
    assert config.max_ongoing_requests_needed <= deployment["max_ongoing_requests"], (
        f"{config.max_batch_windows} windows x {config.max_concurrent_batches} batches > "
        f"max_ongoing_requests {deployment['max_ongoing_requests']}"
    )
    assert set(deployment["user_config"]) == set(BatchingConfig.model_fields), (
        "serve_config.yaml should spell out every batching setting"
    )


def _as_serve_applies(entry: dict[str, Any]) -> Any:
    """The Whisper deployment's config once Serve has applied a serve_config.yaml entry to
    the code's defaults (the controller's own merge function, run without a cluster)."""
    from ray.serve._private.application_state import override_deployment_info
    from ray.serve._private.deployment_info import DeploymentInfo
    from ray.serve.schema import ServeApplicationSchema

    deployment: Any = WhisperTranscriber
    code = DeploymentInfo(deployment._deployment_config, deployment._replica_config, 0, "")
    app = ServeApplicationSchema(import_path="deployments.app:build_app", deployments=[entry])
    return override_deployment_info({"WhisperTranscriber": code}, app)["WhisperTranscriber"]


def test_a_config_entry_num_replicas_is_not_overridden_by_code_autoscaling() -> None:
    """The builder bug: a code default `autoscaling_config` outlived an entry's
    `num_replicas`, so `num_replicas: 2` ran one replica. Now the entry's number wins, an
    entry's autoscaling_config still autoscales, and an entry without either runs one."""
    fixed = _as_serve_applies({"name": "WhisperTranscriber", "num_replicas": 2})
    assert fixed.deployment_config.num_replicas == 2
    assert fixed.deployment_config.autoscaling_config is None
    shipped = _as_serve_applies(_whisper_deployment()).deployment_config.autoscaling_config
    assert (shipped.min_replicas, shipped.max_replicas) == (1, 1)
    bare = _as_serve_applies({"name": "WhisperTranscriber"}).deployment_config
    assert (bare.num_replicas, bare.autoscaling_config) == (1, None)


def test_batching_config_refuses_unknown_keys_and_bad_values_clearly() -> None:
    with pytest.raises(ValueError, match="max_batch_size: Extra inputs are not permitted") as e:
        BatchingConfig.from_user_config({"max_batch_size": 4})
    assert "Known keys: max_batch_windows, batch_wait_timeout_s" in str(e.value)
    with pytest.raises(ValueError, match="max_batch_windows: Input should be greater than"):
        BatchingConfig.from_user_config({"max_batch_windows": 0})
    with pytest.raises(ValueError, match="coalesce_quiet_s: Input should be a valid number"):
        BatchingConfig.from_user_config({"coalesce_quiet_s": "soon"})
    config = BatchingConfig.from_user_config({"max_batch_windows": 4})
    assert (config.max_batch_windows, config.batch_wait_timeout_s) == (4, 0.01)


async def test_reconfigure_applies_live_keys_and_keeps_concurrency_once_serving(
    settings: Settings,
) -> None:
    cls: Any = WhisperTranscriber.func_or_class  # the class behind the Serve deployment
    replica = cls(settings)  # the real replica, tiny.en, no Ray started
    replica.reconfigure({"max_concurrent_batches": 2})  # before traffic: built as configured
    assert (await replica.stats())["batching"]["max_concurrent_batches"] == 2
    replica._batch_used = True  # a request has met Serve's batch queue since
    replica.reconfigure(
        {"max_batch_windows": 2, "coalesce_quiet_s": 0.05, "max_concurrent_batches": 8}
    )
    assert (await replica.stats())["batching"] == {
        **BatchingConfig().model_dump(),
        "max_batch_windows": 2,
        "coalesce_quiet_s": 0.05,
        "max_concurrent_batches": 2,  # Serve has no setter: kept until the replica restarts
    }
    coalescer = replica._coalescer
    assert (coalescer.max_windows, coalescer.max_wait_s, coalescer.quiet_s) == (2, 0.3, 0.05)
