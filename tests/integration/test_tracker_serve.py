"""The job tracker as a Serve deployment: redeploys replace it, replicas share the work.

Serve versions an application by its config only (import path, runtime_env, args), so the
config is stamped with a digest of the code and the settings (`deployments.app.stamp`);
these tests change each and redeploy, as `serve deploy` of a re-stamped config does.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from deployments.app import ROOT, release_digest
from services.core.settings import Settings
from tests import serve_local as local
from tests.conftest import ENGLISH, report
from tests.integration import serve_admin as admin
from tests.integration.test_jobs_serve import _check_all_succeeded, _submit_all, _wait_for_running

pytestmark = pytest.mark.integration


def _restamped(config: dict[str, Any]) -> dict[str, Any]:
    """The deployed config with the main app's release digest computed again, here."""
    changed = copy.deepcopy(config)
    args = admin.main_app(changed)["args"]
    args["release"] = release_digest(Settings(**args["settings"]))
    return changed


def _redeploy_and_wait(config: dict[str, Any], count: int = 1) -> list[dict[str, Any]]:
    old = admin.tracker_replicas()
    started = time.monotonic()
    admin.redeploy(config)
    statuses = admin.wait_for_new_trackers(old, count)
    local.wait_until_running(local.APP_NAME)
    report(f"tracker replaced {time.monotonic() - started:.1f} s after the redeploy")
    return statuses


def test_a_code_change_replaces_the_tracker(serve_url: str, http: httpx.Client) -> None:
    config = admin.deployed_config()
    before = admin.main_app(config)["args"]["release"]
    probe = ROOT / "cluster" / f"_redeploy_probe_{uuid.uuid4().hex[:8]}.py"
    probe.write_text('"""A code change for the redeploy test; deleted after it."""\n')
    try:
        changed = _restamped(config)
        after = admin.main_app(changed)["args"]["release"]
        assert after != before, "the digest did not see the new file"
        (status,) = _redeploy_and_wait(changed)
    finally:
        probe.unlink()
    # build_app computed the same digest where Serve built the app: it saw the new code.
    assert status["version"] == after
    assert http.get("/readyz").json()["jobs"] == "ok"


def test_a_settings_change_replaces_the_tracker(
    serve_url: str, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `RAYSCRIBE_*` variable, which Serve alone never sees, changes the stamp."""
    config = admin.deployed_config()
    before = admin.main_app(config)["args"]["release"]
    monkeypatch.setenv("RAYSCRIBE_JOBS__SWEEP_INTERVAL_S", "61")
    changed = _restamped(config)
    assert admin.main_app(changed)["args"]["release"] != before
    old = admin.tracker_statuses()
    (status,) = _redeploy_and_wait(changed)
    assert status["name"] not in {s["name"] for s in old}
    assert status["epoch"] > max(s["epoch"] for s in old)


async def _owners(database_url: str, ids: list[str]) -> dict[str, str]:
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        rows = await connection.fetch(
            "SELECT id, lease_owner FROM jobs WHERE id = ANY($1::text[])", ids
        )
    finally:
        await connection.close()
    return {row["id"]: row["lease_owner"] for row in rows}


def test_a_rolling_update_to_two_trackers_loses_and_duplicates_nothing(
    serve_url: str, http: httpx.Client, serve_database: str
) -> None:
    """16 jobs running; the tracker is rolled (new actor options) and scaled to 2 replicas.

    The old replica stops gracefully while the new ones start: it releases its jobs without
    using an attempt, and the two new replicas share the rest through SKIP LOCKED claims.
    """
    original = admin.deployed_config()
    rolled = copy.deepcopy(original)
    entry = admin.tracker_entry(rolled)
    entry["num_replicas"] = 2
    entry["ray_actor_options"] = {"num_cpus": 0}  # room for both beside the old one
    clips = [ENGLISH[i % 16] for i in range(16)]
    ids = asyncio.run(_submit_all(serve_url, clips))
    _wait_for_running(http, ids)
    try:
        new = _redeploy_and_wait(rolled, count=2)
        finished = _check_all_succeeded(http, serve_database, clips, ids)
    finally:
        _redeploy_and_wait(original)
    assert [f["attempts"] for f in finished] == [1] * len(ids), "a stop used up an attempt"
    owners = asyncio.run(_owners(serve_database, ids))
    new_names = {s["name"] for s in new}
    by_new = {name: sum(owner == name for owner in owners.values()) for name in new_names}
    assert all(count > 0 for count in by_new.values()), f"a new replica ran nothing: {by_new}"
    report(
        f"rolling update: {len(ids)} jobs, {len(ids)} results, all on attempt 1; "
        f"finished by the old replica {len(ids) - sum(by_new.values())}, "
        f"by the two new ones {sorted(by_new.values())}"
    )
