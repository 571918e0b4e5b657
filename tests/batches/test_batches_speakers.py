"""`options.speakers` and `options.num_speakers` on `POST /v1/batches` (a fake Ray): they
become the job's `--speakers --num-speakers N`, a bad count is 400, and so is asking for
speakers where the diarization extra is not there (the job would refuse at once)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.batches.conftest import EnvFactory

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


async def test_speakers_travel_to_the_job_as_flags(batches_env: EnvFactory) -> None:
    env = await batches_env()
    plain = (await env.submit()).json()
    assert "--speakers" not in env.ray.specs[plain["ray_job_id"]].entrypoint
    response = await env.submit(options={"speakers": True, "num_speakers": 3})
    assert response.status_code == 201, response.text
    batch = response.json()
    assert (batch["options"]["speakers"], batch["options"]["num_speakers"]) == (True, 3)
    argv = shlex.split(env.ray.specs[batch["ray_job_id"]].entrypoint)
    assert "--speakers" in argv
    assert argv[argv.index("--num-speakers") + 1] == "3"
    found = (await env.client.get(f"/v1/batches/{batch['id']}")).json()
    assert found["options"]["num_speakers"] == 3
    alone = (await env.submit(options={"speakers": True})).json()
    assert "--num-speakers" not in env.ray.specs[alone["ray_job_id"]].entrypoint


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"speakers": True, "num_speakers": 0}, "between 1 and 8, got 0"),
        ({"speakers": True, "num_speakers": 9}, "between 1 and 8, got 9"),
        ({"num_speakers": 2}, "only with speakers: true"),
        ({"speakers": "perhaps"}, "boolean"),
    ],
)
async def test_bad_speaker_options(
    batches_env: EnvFactory, options: dict[str, Any], message: str
) -> None:
    env = await batches_env()
    response = await env.submit(options=options)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_value"
    assert message in error["message"]
    assert env.ray.specs == {}


async def test_speakers_without_the_extra_are_refused(
    batches_env: EnvFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `resemblyzer` without its weights first on the path: what an install without
    the extra's encoder weights looks like to the service."""
    env = await batches_env()
    shadow = tmp_path / "shadow"
    (shadow / "resemblyzer").mkdir(parents=True)
    (shadow / "resemblyzer" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(shadow))
    response = await env.submit(options={"speakers": True})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("diarization_unavailable", "options.speakers")
    assert "weights are missing" in error["message"]
    assert env.ray.specs == {}
    assert (await env.submit()).status_code == 201  # without speakers it still runs
