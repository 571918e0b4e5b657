"""Speaker labels on jobs (`response_format=diarized_json`), against real databases.

The real tiny.en model and the real diarization pipeline (in this process, behind the
`SpeakerLabeller` protocol, counting its calls) on a two-speaker conversation of recorded
voices, long enough for two 30 s chunks: the labels follow the turns across both chunks,
and a job whose tracker is killed mid-run resumes from its stored chunk and turns, never
diarizes again and answers the same labels as an uninterrupted run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from services.core.clock import utcnow
from services.diarization.pipeline import Diarizer, Reference, Turn
from services.jobs import service as jobs_service
from services.jobs import speakers as jobs_speakers
from services.transcription.domain import Transcript, TranscriptionOptions, Waveform
from tests.diarization.conversations import (
    SAMPLE_RATE,
    conversation,
    data_url,
    reference_audio,
    wav_bytes,
)
from tests.jobs.conftest import CountingTranscriber, JobsEnv

CONVERSATION, TRUTH = conversation(2, rounds=6, gap_s=0.4, seed=3)  # 58 s: two chunks
CHUNK_S = 30.0
ONE_MINUTE = timedelta(minutes=1)
SHORT, SHORT_TRUTH = conversation(2, rounds=2, gap_s=0.4, seed=3)  # one chunk


class CountingLabeller:
    """The real pipeline behind the `SpeakerLabeller` protocol, counting the files it gets."""

    def __init__(self, diarizer: Diarizer, *, fail: bool = False) -> None:
        self._diarizer = diarizer
        self._fail = fail
        self.calls = 0
        self.references: list[list[str]] = []
        """The names of the references each call got."""

    async def diarize(
        self, audio: Waveform, num_speakers: int | None, references: list[tuple[str, Waveform]]
    ) -> list[Turn]:
        self.calls += 1
        if self._fail:
            raise RuntimeError("the encoder ran out of memory")
        self.references.append([name for name, _ in references])
        known = [Reference(name, clip) for name, clip in references]
        return await asyncio.to_thread(self._diarizer.diarize, audio, num_speakers, known)


@pytest.fixture(scope="module")
def diarizer() -> Diarizer:
    return Diarizer()


KNOWN = {
    "known_speaker_names[]": ["Alice", "Bob"],
    "known_speaker_references[]": [data_url(wav_bytes(reference_audio(v))) for v in ("awb", "rms")],
}


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("speakers") / "talk.wav"
    path.write_bytes(wav_bytes(CONVERSATION))
    return path


@pytest.fixture(scope="module")
def short_talk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("speakers") / "short.wav"
    path.write_bytes(wav_bytes(SHORT))
    return path


def _runs(segments: Sequence[dict[str, Any]]) -> list[str]:
    runs: list[str] = []
    for segment in segments:
        if not runs or runs[-1] != segment["speaker"]:
            runs.append(segment["speaker"])
    return runs


async def _execute(env: JobsEnv, statement: str, **params: Any) -> None:
    async with env.app_runtime.sessions() as session, session.begin():
        await session.execute(text(statement), params)


async def _attempt_ended(env: JobsEnv, job_id: str, attempt: int) -> str:
    """The job's status once its `attempt`-th attempt ended (read from the database: the
    status cache still holds the first run's answer)."""
    for _ in range(600):
        rows = await env.sql("SELECT status, attempts FROM jobs WHERE id = :id", id=job_id)
        status, attempts = rows[0]
        if attempts >= attempt and status not in ("queued", "running"):
            return str(status)
        await asyncio.sleep(0.1)
    raise TimeoutError(f"attempt {attempt} of job {job_id} did not end")


async def _result(env: JobsEnv, job_id: str, **params: str) -> Any:
    response = await env.client.get(f"/v1/jobs/{job_id}/result", params=params)
    assert response.status_code == 200, response.text
    return response.json() if "json" in response.headers["content-type"] else response.text


async def test_diarized_job_labels_turns_and_a_killed_one_resumes_with_them(
    env_factory: Any, diarizer: Diarizer, talk: Path
) -> None:
    labeller = CountingLabeller(diarizer)
    env: JobsEnv = await env_factory(diarization=True, speakers=labeller, chunk_s=CHUNK_S)
    submitted = await env.submit(talk, response_format="diarized_json", num_speakers="2")
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert submitted.json()["progress"]["total"] == 3  # two chunks and the speakers
    done = await env.wait(job_id)
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"done": 3, "total": 3}
    assert labeller.calls == 1
    chunks = await env.sql("SELECT count(*) FROM job_chunks WHERE job_id = :id", id=job_id)
    assert chunks[0][0] == 2

    first = await _result(env, job_id)
    assert first["task"] == "transcribe"
    assert first["duration"] == pytest.approx(CONVERSATION.size / SAMPLE_RATE, abs=0.05)
    assert {s["type"] for s in first["segments"]} == {"transcript.text.segment"}
    # Each turn of the truth is one run of its speaker, the same label in both chunks.
    order = [TRUTH[0].speaker, next(t.speaker for t in TRUTH if t.speaker != TRUTH[0].speaker)]
    names = dict(zip(order, ["A", "B"], strict=True))
    assert _runs(first["segments"]) == [names[turn.speaker] for turn in TRUTH]
    # Other formats still work on it, without speakers.
    verbose = await _result(env, job_id, response_format="verbose_json")
    assert verbose["text"] == first["text"]
    assert "speaker" not in str(verbose)
    assert (await _result(env, job_id, response_format="text")).strip() == first["text"]

    await _killed_mid_job(env, labeller, talk, first)


class StallingTranscriber(CountingTranscriber):
    """Transcribes the first chunk, then holds every later one until cancelled: a tracker
    that dies mid-job, after its first chunk and the speakers were stored."""

    async def transcribe(
        self, audio: Waveform, options: TranscriptionOptions, *, background: bool = False
    ) -> Transcript:
        if self.calls >= 1:
            await asyncio.Event().wait()
        return await super().transcribe(audio, options, background=background)


async def _killed_mid_job(
    env: JobsEnv, labeller: CountingLabeller, talk: Path, uninterrupted: Any
) -> None:
    """The same audio again, the tracker killed once its first chunk and the speakers are
    stored: the resumed job diarizes nothing, transcribes only the rest, and answers the
    same labels as the uninterrupted run."""
    fields = {"response_format": "diarized_json", "num_speakers": "2"}
    await env.stop_runner()
    local = env.transcriber
    env.transcriber = StallingTranscriber(local)
    await env.start_runner()
    job_id = (await env.submit(talk, **fields)).json()["id"]
    for _ in range(600):
        chunks = await env.sql("SELECT count(*) FROM job_chunks WHERE job_id = :id", id=job_id)
        speakers = await env.sql("SELECT count(*) FROM job_speakers WHERE job_id = :id", id=job_id)
        if chunks[0][0] == 1 and speakers[0][0] == 1:
            break
        await asyncio.sleep(0.1)
    else:
        raise TimeoutError("the first chunk and the speakers were not stored")
    assert labeller.calls == 2
    progress = await env.sql(
        "SELECT progress_done, progress_total FROM jobs WHERE id = :id", id=job_id
    )
    assert tuple(progress[0]) == (2, 3)  # one chunk and the speakers, of two chunks and them
    await env.stop_runner()  # the tracker dies with the job running under its lease
    env.transcriber = CountingTranscriber(local)
    await env.start_runner()  # the same tracker again: it takes its old leases over at once
    assert await _attempt_ended(env, job_id, attempt=2) == "succeeded"
    assert labeller.calls == 2, "the stored speaker turns were found again"
    assert env.transcriber.calls == 1  # the second chunk only
    assert await _result(env, job_id) == uninterrupted


async def test_diarization_failure_fails_the_job(
    env_factory: Any, diarizer: Diarizer, talk: Path
) -> None:
    labeller = CountingLabeller(diarizer, fail=True)
    env: JobsEnv = await env_factory(diarization=True, speakers=labeller, max_attempts=1)
    job_id = (await env.submit(talk, response_format="diarized_json")).json()["id"]
    done = await env.wait(job_id)
    assert done["status"] == "failed"
    assert done["error_code"] == "attempts_exhausted"
    assert "(diarization_failed)" in done["error"]
    assert "memory" not in done["error"]  # the exception's text stays in the log


async def test_tracker_without_a_labeller_fails_the_job(env_factory: Any, talk: Path) -> None:
    env: JobsEnv = await env_factory(diarization=True)  # accepted, but no labeller runs it
    job_id = (await env.submit(talk, response_format="diarized_json")).json()["id"]
    done = await env.wait(job_id)
    assert done["status"] == "failed"
    assert done["error_code"] == "diarization_unavailable"


async def test_diarized_job_refusals(env_factory: Any, talk: Path) -> None:
    off: JobsEnv = await env_factory(start=False)
    refused = await off.submit(talk, response_format="diarized_json")
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "diarization_unavailable"
    assert "RAYSCRIBE_DIARIZATION__ENABLED=true" in error["message"]
    stored = await off.sql("SELECT count(*) FROM jobs")
    assert stored[0][0] == 0


async def test_diarized_audio_over_the_cap_is_refused_at_submission_and_when_it_runs(
    env_factory: Any, diarizer: Diarizer, talk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clustering memory grows with the square of the length: past `MAX_DIARIZED_S` a
    diarized job is refused (413 on the declared duration) and, should the header
    understate it, fails for good when decoded, instead of crashing the shared diarizer
    over and over. The cap is lowered here to the 58 s test conversation's length."""
    monkeypatch.setattr(jobs_service, "MAX_DIARIZED_S", 30.0)
    monkeypatch.setattr(jobs_speakers, "MAX_DIARIZED_S", 30.0)
    labeller = CountingLabeller(diarizer)
    env: JobsEnv = await env_factory(diarization=True, speakers=labeller)
    refused = await env.submit(talk, response_format="diarized_json")
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("audio_too_long", "file")
    assert "at most 30 s" in error["message"]
    assert (await env.submit(talk, response_format="json")).status_code == 202  # plain: fine
    monkeypatch.setattr(jobs_service, "MAX_DIARIZED_S", 3600.0)  # the header "understates"
    job_id = (await env.submit(talk, response_format="diarized_json")).json()["id"]
    done = await env.wait(job_id)
    assert (done["status"], done["error_code"], done["attempts"]) == ("failed", "audio_too_long", 1)
    assert labeller.calls == 0


async def test_diarized_job_bad_fields(env_factory: Any, talk: Path) -> None:
    env: JobsEnv = await env_factory(diarization=True)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"task": "translate"}, "response_format", "translations do not support it"),
        ({"num_speakers": "0"}, "num_speakers", "between 1 and 8"),
        ({"num_speakers": "9"}, "num_speakers", "between 1 and 8"),
    ]
    for fields, param, said in cases:
        response = await env.submit(talk, response_format="diarized_json", **fields)
        assert response.status_code == 400, (fields, response.text)
        error = response.json()["error"]
        assert error["param"] == param, error
        assert said in error["message"], error
    # A job submitted without speakers cannot be read as diarized_json later.
    plain = (await env.submit(talk, response_format="json")).json()["id"]
    assert (await env.wait(plain))["status"] == "succeeded"
    later = await env.client.get(
        f"/v1/jobs/{plain}/result", params={"response_format": "diarized_json"}
    )
    assert later.status_code == 400, later.text
    assert "not submitted with response_format=diarized_json" in later.json()["error"]["message"]


async def _references_stored(env: JobsEnv, job_id: str) -> list[str]:
    rows = await env.sql(
        "SELECT name FROM job_speaker_references WHERE job_id = :id ORDER BY position",
        id=job_id,
    )
    return [row[0] for row in rows]


async def test_known_speakers_name_a_jobs_turns(
    env_factory: Any, diarizer: Diarizer, short_talk: Path
) -> None:
    """References decoded at submission, stored beside the job (never in its row), passed
    to the labeller, named in the result, and dropped once the turns are stored."""
    labeller = CountingLabeller(diarizer)
    env: JobsEnv = await env_factory(diarization=True, speakers=labeller, start=False)
    submitted = await env.submit(
        short_talk, response_format="diarized_json", num_speakers="2", **KNOWN
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert await _references_stored(env, job_id) == ["Alice", "Bob"]
    options = (await env.sql("SELECT options FROM jobs WHERE id = :id", id=job_id))[0][0]
    assert "data:audio" not in str(options)
    assert "Alice" not in str(options)
    await env.start_runner()
    done = await env.wait(job_id)
    assert done["status"] == "succeeded", done
    assert labeller.references == [["Alice", "Bob"]]
    result = await _result(env, job_id)
    names = {"awb": "Alice", "rms": "Bob"}
    assert _runs(result["segments"]) == [names[turn.speaker] for turn in SHORT_TRUTH]
    assert await _references_stored(env, job_id) == []  # the turns are named for good


async def test_a_deleted_or_expired_job_loses_its_references(
    env_factory: Any, short_talk: Path
) -> None:
    env: JobsEnv = await env_factory(diarization=True, start=False)
    fields = {"response_format": "diarized_json", **KNOWN}
    deleted = (await env.submit(short_talk, **fields)).json()["id"]
    expired = (await env.submit(short_talk, **fields)).json()["id"]
    for job_id in (deleted, expired):
        assert await _references_stored(env, job_id) == ["Alice", "Bob"]
        cancelled = await env.client.delete(f"/v1/jobs/{job_id}")
        assert cancelled.json()["status"] == "cancelled", cancelled.text
    assert await _references_stored(env, deleted) == ["Alice", "Bob"]  # cancelled, kept
    assert (await env.client.delete(f"/v1/jobs/{deleted}")).status_code == 200
    assert await _references_stored(env, deleted) == []
    await _execute(
        env, "UPDATE jobs SET expires_at = :t WHERE id = :id", t=utcnow() - ONE_MINUTE, id=expired
    )
    assert await _references_stored(env, expired) == ["Alice", "Bob"]
    assert await env.app_runtime.jobs.purge_expired() == 1
    assert await _references_stored(env, expired) == []


@pytest.mark.parametrize(
    ("reference", "said"),
    [
        ("https://example.com/alice.wav", "data URL of audio"),
        ("data:audio/wav;base64,!!!not-base64!!!", "not valid base64"),
        ("data:audio/wav;base64,UklGRiBub25zZW5zZQ==", "could not be decoded"),
        (data_url(wav_bytes(np.zeros(SAMPLE_RATE // 2, dtype=np.float32))), "lasts 0.5 s"),
        (data_url(wav_bytes(np.zeros(12 * SAMPLE_RATE, dtype=np.float32))), "longer than 10 s"),
    ],
)
async def test_bad_references_refuse_the_job(
    env_factory: Any, short_talk: Path, reference: str, said: str
) -> None:
    env: JobsEnv = await env_factory(diarization=True, start=False)
    good = KNOWN["known_speaker_references[]"][0]
    response = await env.submit(
        short_talk,
        response_format="diarized_json",
        **{**KNOWN, "known_speaker_references[]": [good, reference]},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "known_speaker_references", error
    assert said in error["message"], error
    assert "known_speaker_references[1]" in error["message"], error
    assert (await env.sql("SELECT count(*) FROM jobs"))[0][0] == 0
    assert (await env.sql("SELECT count(*) FROM job_speaker_references"))[0][0] == 0
