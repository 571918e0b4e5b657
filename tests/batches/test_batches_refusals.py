"""Every batches endpoint refuses bad input with a 4xx and OpenAI's error body, and never
reads or writes outside `bulk.allowed_roots` (403), however the path is dressed up."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.batches.conftest import BatchesEnv, EnvFactory

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def _error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


async def _refused(env: BatchesEnv, *, code: str = "path_not_allowed", **body: Any) -> str:
    before = len(env.ray.specs)
    response = await env.submit(**body)
    error = _error(response, 403, code)
    assert len(env.ray.specs) == before, "a refused batch must never reach Ray"
    return str(error["message"])


async def test_outside_the_roots(batches_env: EnvFactory, tmp_path: Path) -> None:
    env = await batches_env()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    message = await _refused(env, input=str(elsewhere))
    assert "allowed_roots" in message
    await _refused(env, output=str(elsewhere))
    await _refused(env, output="/")
    await _refused(env, input="/etc/passwd")
    # A sibling whose name merely starts like the root is not under it.
    sibling = Path(str(env.roots) + "-evil")
    await asyncio.to_thread(sibling.mkdir)
    await _refused(env, input=str(sibling))


async def test_dot_dot_escapes(batches_env: EnvFactory) -> None:
    env = await batches_env()
    await _refused(env, input=f"{env.roots}/in/../../elsewhere")
    await _refused(env, output=f"{env.roots}/out/../../../tmp/x")
    await _refused(env, input=f"{env.roots}/in/../in")  # even one that stays inside
    await _refused(env, input="s3://media/allowed/../secret")


async def test_symlinks_out(batches_env: EnvFactory, tmp_path: Path) -> None:
    env = await batches_env()
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "voice.wav").write_bytes(b"RIFF")
    (env.roots / "link").symlink_to(secret)
    await _refused(env, input=str(env.roots / "link"))
    await _refused(env, output=str(env.roots / "link" / "rows"))
    # A symlink planted inside an allowed input directory, or matched by a glob.
    (env.roots / "in" / "planted.wav").symlink_to(secret / "voice.wav")
    message = await _refused(env, input=str(env.roots / "in"))
    assert "planted.wav" in message
    await _refused(env, input=str(env.roots / "in" / "*.wav"))


async def test_manifest_rows_outside(batches_env: EnvFactory, tmp_path: Path) -> None:
    env = await batches_env()
    inside = env.roots / "in" / "a.flac"
    inside.write_bytes(b"fLaC")
    rows = [{"path": str(inside)}, {"path": "/etc/shadow"}]
    jsonl = env.roots / "manifest.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "/etc/shadow" in await _refused(env, input=str(jsonl))
    csv = env.roots / "manifest.csv"
    csv.write_text(f"path,language\n{inside},en\n../../x.wav,en\n")
    await _refused(env, input=str(csv))
    parquet = env.roots / "manifest.parquet"
    pq.write_table(pa.table({"path": [str(inside), "s3://other-bucket/a.wav"]}), parquet)
    await _refused(env, input=str(parquet))
    # The same manifest with rows inside is accepted (relative rows: next to the manifest).
    jsonl.write_text(json.dumps({"path": str(inside)}) + "\n" + json.dumps({"path": "in/b.wav"}))
    accepted = await env.submit(input=str(jsonl))
    assert accepted.status_code == 201, accepted.text


async def test_bad_manifests(batches_env: EnvFactory) -> None:
    env = await batches_env()
    no_path = env.roots / "rows.jsonl"
    no_path.write_text(json.dumps({"file": "a.wav"}) + "\n")
    _error(await env.submit(input=str(no_path)), 400, "invalid_manifest")
    broken = env.roots / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    _error(await env.submit(input=str(broken)), 400, "invalid_manifest")


async def test_s3_prefixes(batches_env: EnvFactory) -> None:
    env = await batches_env()
    accepted = await env.submit(input="s3://media/allowed/calls/", output="s3://media/allowed/rows")
    assert accepted.status_code == 201, accepted.text
    await _refused(env, input="s3://media/allowed-not/calls")
    await _refused(env, input="s3://media/")
    await _refused(env, input="s3://other/allowed/calls")
    await _refused(env, output="s3://media")
    await _refused(env, input="s3://media/allowed/list.jsonl")  # its rows are not visible here


async def test_no_roots_configured_allows_nothing(batches_env: EnvFactory) -> None:
    env = await batches_env(allowed_roots=[])
    message = await _refused(env)
    assert "allows no batch roots" in message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": None}, "input"),
        ({"output": ""}, "output"),
        ({"options": {"format": "csv"}}, "options.format"),
        ({"options": {"task": "summarise"}}, "options.task"),
        ({"options": {"min_workers": 0}}, "options.min_workers"),
        ({"options": {"min_workers": 4, "max_workers": 2}}, "options"),
        ({"options": {"language": "klingon"}}, "options"),
        ({"options": {"num_gpus": -1}}, "options.num_gpus"),
        ({"options": {"model": "../../etc"}}, "options.model"),
        ({"options": {"subtitles": "ass"}}, "options.subtitles"),
        ({"options": {"unknown": 1}}, "options.unknown"),
        ({"extra": True}, "extra"),
    ],
)
async def test_bad_bodies(batches_env: EnvFactory, body: dict[str, Any], param: str) -> None:
    env = await batches_env()
    error = _error(await env.submit(**body), 400, "invalid_value")
    assert error["param"] == param
    assert env.ray.specs == {}


async def test_bad_paths_and_json(batches_env: EnvFactory) -> None:
    env = await batches_env()
    _error(await env.submit(input="relative/dir"), 400, "invalid_value")
    _error(await env.submit(output="out\x00put"), 400, "invalid_value")
    _error(await env.submit(input=" " + str(env.roots / "in")), 400, "invalid_value")
    _error(await env.submit(input="/" + "a" * 5000), 400, "invalid_value")
    not_json = await env.client.post(
        "/v1/batches", content=b"{input", headers={"Content-Type": "application/json"}
    )
    _error(not_json, 400)
    form = await env.client.post("/v1/batches", data={"input": "/x", "output": "/y"})
    _error(form, 400)


async def test_reads_of_unknown_batches_and_bad_queries(batches_env: EnvFactory) -> None:
    env = await batches_env()
    for method, path in (
        ("GET", "/v1/batches/nope"),
        ("DELETE", "/v1/batches/nope"),
        ("GET", "/v1/batches/nope/logs"),
        ("GET", "/v1/batches/" + "x" * 300),
    ):
        _error(await env.client.request(method, path), 404, "batch_not_found")
    batch = (await env.submit()).json()
    _error(await env.client.get("/v1/batches", params={"limit": 0}), 400, "invalid_value")
    _error(await env.client.get("/v1/batches", params={"limit": 101}), 400, "invalid_value")
    _error(await env.client.get("/v1/batches", params={"state": "done"}), 400, "invalid_value")
    _error(await env.client.get("/v1/batches", params={"cursor": "garbage!"}), 400, "invalid_value")
    logs = f"/v1/batches/{batch['id']}/logs"
    _error(await env.client.get(logs, params={"tail": 0}), 400, "invalid_value")
    _error(await env.client.get(logs, params={"tail": "many"}), 400, "invalid_value")
    _error(await env.client.get(logs, params={"tail": 10_001}), 400, "invalid_value")


async def test_roles_and_owners(batches_env: EnvFactory) -> None:
    env = await batches_env(auth=True)
    alice, bob = env.token("alice"), env.token("bob")
    mine = await env.submit(headers=alice)
    assert mine.status_code == 201, mine.text
    batch_id = mine.json()["id"]
    # Without a token: 401; with a token lacking the role: 403, on every endpoint.
    transcriber = env.token("carol", "transcriber")
    endpoints = [
        ("POST", "/v1/batches"),
        ("GET", "/v1/batches"),
        ("GET", f"/v1/batches/{batch_id}"),
        ("DELETE", f"/v1/batches/{batch_id}"),
        ("GET", f"/v1/batches/{batch_id}/logs"),
    ]
    body = {"input": str(env.roots / "in"), "output": str(env.roots / "out")}
    for method, path in endpoints:
        kwargs: dict[str, Any] = {"json": body} if method == "POST" else {}
        _error(await env.client.request(method, path, **kwargs), 401)
        response = await env.client.request(method, path, headers=transcriber, **kwargs)
        _error(response, 403, "permission_denied")
    # Another owner's batch is a missing batch, on every read and the stop.
    for method, path in endpoints[2:]:
        _error(await env.client.request(method, path, headers=bob), 404, "batch_not_found")
    assert env.ray.stopped == []
    assert (await env.client.get("/v1/batches", headers=bob)).json()["data"] == []
    listed = (await env.client.get("/v1/batches", headers=alice)).json()["data"]
    assert [b["id"] for b in listed] == [batch_id]
    assert listed[0]["owner"].endswith("#alice")
    # An admin sees everyone's.
    admin = env.token("root", "admin")
    assert (await env.client.get(f"/v1/batches/{batch_id}", headers=admin)).status_code == 200
