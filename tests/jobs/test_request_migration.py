"""Revision 0003 turns `jobs.options` into the stored `TranscriptionRequest`: rows written
before it read back as the model, and an Idempotency-Key stored before it still matches
its retry after it (the fingerprint did not change)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from services.core.clock import utcnow
from services.jobs.tables import IdempotencyKey, Job, JobStatus
from services.migrations import downgrade, upgrade
from services.transcription.local import LocalTranscriber
from services.transcription.request import TranscriptionRequest
from tests.conftest import DISTINCT
from tests.jobs.conftest import build_env, close_env, make_settings
from tests.servers import create_database, drop_database

BEFORE = "0002_leases_versions_cuts"
FIELDS = {
    "model": "whisper-1",
    "language": "EN",
    "temperature": "0.2",
    "response_format": "verbose_json",
    "timestamp_granularities[]": "word",
}
# What revision 0002's code stored for FIELDS, and its fingerprint formula, verbatim.
OLD_OPTIONS = {
    "language": "en",
    "prompt": None,
    "temperature": 0.2,
    "response_format": "verbose_json",
    "timestamp_granularities": ["word"],
}


def _old_fingerprint(audio_sha256: str, task: str, options: dict[str, Any]) -> str:
    fields = json.dumps({"task": task, **options}, sort_keys=True)
    return hashlib.sha256(f"{audio_sha256}|{fields}".encode()).hexdigest()


def _old_job(job_id: str, audio: bytes) -> Job:
    now = utcnow()
    return Job(
        id=job_id, owner=None, status=JobStatus.QUEUED, task="transcribe", model="tiny.en",
        options=OLD_OPTIONS, audio_key=None, audio_sha256=hashlib.sha256(audio).hexdigest(),
        audio_bytes=len(audio), attempts=0, max_attempts=3, progress_done=0,
        next_attempt_at=now, created_at=now, updated_at=now, expires_at=now,
        result_deleted=False, interruptions=0, version=0,
    )  # fmt: skip


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_old_rows_read_back_and_old_idempotency_keys_still_match(
    backend: str, tmp_path: Path, shared_redis: str, local_transcriber: LocalTranscriber
) -> None:
    name, url = await create_database() if backend == "postgres" else ("", "")
    settings = make_settings(tmp_path, backend, url, shared_redis)
    audio = DISTINCT[0].path.read_bytes()
    job_id = str(uuid.uuid4())
    env = None
    try:
        await asyncio.to_thread(upgrade, settings.database_url, BEFORE)
        env = await build_env(settings, local_transcriber, backend)
        old_hash = _old_fingerprint(hashlib.sha256(audio).hexdigest(), "transcribe", OLD_OPTIONS)
        async with env.app_runtime.sessions() as session, session.begin():
            session.add(_old_job(job_id, audio))
            session.add(
                IdempotencyKey(
                    scope="anonymous", key="k1", job_id=job_id, request_hash=old_hash,
                    created_at=utcnow(),
                )
            )  # fmt: skip
        await asyncio.to_thread(upgrade, settings.database_url)

        (stored,) = (await env.sql("SELECT options FROM jobs WHERE id = :id", id=job_id))[0]
        options = json.loads(stored) if isinstance(stored, str) else stored
        request = TranscriptionRequest.model_validate(options)
        assert (request.task, request.model, request.language) == ("transcribe", "tiny.en", "en")
        assert request.fingerprint(hashlib.sha256(audio).hexdigest()) == old_hash

        files = {"file": ("a.flac", audio)}
        retry = await env.client.post(
            "/v1/jobs", files=files, data=FIELDS, headers={"Idempotency-Key": "k1"}
        )
        assert retry.status_code == 202, retry.text
        assert retry.json()["id"] == job_id
        assert retry.headers["Idempotent-Replayed"] == "true"
        changed = await env.client.post(
            "/v1/jobs",
            files=files,
            data={**FIELDS, "temperature": "0.3"},
            headers={"Idempotency-Key": "k1"},
        )
        assert changed.status_code == 409, changed.text

        await asyncio.to_thread(downgrade, settings.database_url, BEFORE)
        (stored,) = (await env.sql("SELECT options FROM jobs WHERE id = :id", id=job_id))[0]
        assert (json.loads(stored) if isinstance(stored, str) else stored) == OLD_OPTIONS
    finally:
        if env is not None:
            await close_env(env)
        if name:
            await drop_database(name)
