"""The Serve edge pieces that need no cluster: failure mapping and batching config."""

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError

from cluster.whisper_client import ServeTranscriber
from deployments.transcriber import BatchingConfig
from services.core.errors import OverloadedError, UnavailableError
from services.transcription.domain import TranscriptionOptions


class _FailingMethod:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def remote(self, *args: Any) -> Any:
        raise self.error


class _Handle:
    """Stands in for a DeploymentHandle whose calls fail the way Serve's do."""

    def __init__(self, error: Exception) -> None:
        self.transcribe = _FailingMethod(error)


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


def test_batching_config_refuses_a_batch_that_can_never_fill() -> None:
    with pytest.raises(ValueError, match="max_ongoing_requests is 4"):
        BatchingConfig.from_user_config({"max_batch_size": 16}, max_ongoing_requests=4)
    config = BatchingConfig.from_user_config({"max_batch_size": 4}, max_ongoing_requests=4)
    assert config.batch_wait_timeout_s == 0.01


def test_batching_config_refuses_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValidationError):
        BatchingConfig.from_user_config({"max_batch": 4}, max_ongoing_requests=None)
    with pytest.raises(ValidationError):
        BatchingConfig.from_user_config({"max_batch_size": 0}, max_ongoing_requests=None)
