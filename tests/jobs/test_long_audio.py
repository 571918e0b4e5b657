"""Long recordings through jobs: cut at pauses (or overlapped), resumed at the same cuts.

Recordings are built at test time from the fixtures (`tests/long_audio.py`): read sentences
with pauses, one sentence centred on each nominal chunk boundary, and some boundaries with no
pause anywhere near (sentences joined back to back). The real tiny.en model transcribes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.resources import build_resources
from services.transcription.domain import (
    DecodeOptions,
    TranscriptionOptions,
)
from services.transcription.local import LocalTranscriber
from tests.conftest import ENGLISH, normalise, report, word_error_rate
from tests.jobs.conftest import CountingTranscriber, JobsEnv
from tests.jobs.tracker_process import serve_model
from tests.long_audio import Recording, build, score, trimmed

Factory = Callable[..., Any]
WORDS = {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]}


@pytest.fixture(scope="session")
async def short_texts(local_transcriber: LocalTranscriber) -> dict[str, str]:
    """Each sentence sent alone, as a short request would be: the quality to match."""
    options = TranscriptionOptions(DecodeOptions(language="en"), word_timestamps=True)
    texts = {}
    for clip in ENGLISH:
        texts[clip.name] = (await local_transcriber.transcribe(trimmed(clip), options)).text
    return texts


async def _run(env: JobsEnv, path: Path) -> tuple[str, list[dict[str, Any]]]:
    """Submit, watch progress like a client, and return the job id and what it reported."""
    job_id = (await env.submit(path)).json()["id"]
    seen: list[dict[str, Any]] = []
    for _ in range(6000):
        body = (await env.client.get(f"/v1/jobs/{job_id}")).json()
        seen.append(body)
        if body["status"] in ("succeeded", "failed", "cancelled"):
            break
        await asyncio.sleep(0.1)
    assert seen[-1]["status"] == "succeeded", seen[-1]
    return job_id, seen


async def _verbose(env: JobsEnv, job_id: str) -> dict[str, Any]:
    result: dict[str, Any] = (
        await env.client.get(f"/v1/jobs/{job_id}/result", params=WORDS)
    ).json()
    return result


async def _cut_points(env: JobsEnv, job_id: str) -> list[tuple[float, float]]:
    rows = await env.sql("SELECT cut_points FROM jobs WHERE id = :id", id=job_id)
    raw = rows[0][0]
    values = raw if isinstance(raw, list) else json.loads(raw)
    return [(values[k], values[k + 1]) for k in range(0, len(values), 2)]


def _check_progress(seen: list[dict[str, Any]]) -> None:
    running = [b["progress"] for b in seen if b["status"] == "running"]
    assert all(p["total"] is not None for p in running), running
    totals = [p["total"] for p in running] + [seen[-1]["progress"]["total"]]
    assert totals == sorted(totals), totals  # only ever grows
    assert seen[-1]["progress"]["done"] == seen[-1]["progress"]["total"]


def _check_timeline(verbose: dict[str, Any], duration_s: float) -> None:
    """Segments and words in order, never overlapping, all within the file."""
    for key in ("segments", "words"):
        times = [(x["start"], x["end"]) for x in verbose[key]]
        assert all(0 <= s <= e <= duration_s + 1e-6 for s, e in times), key
        assert all(a[1] <= b[0] + 1e-6 for a, b in itertools.pairwise(times)), key


def _check_cuts(
    recording: Recording, cuts: list[tuple[float, float]], *, search_s: float, min_pause_s: float
) -> None:
    """A pause cut lies between sentences; an overlap only where the window had no pause."""
    spans = sorted((p.start_s, p.end_s) for p in recording.placed)
    for end, start in cuts:
        if end == start:
            assert not any(s < end < e for s, e in spans), end
            continue
        assert end - start == pytest.approx(5.0, abs=0.01)  # the overlap setting
        inside = [(s, e) for s, e in spans if e > end - search_s and s < end]
        gaps = [b[0] - a[1] for a, b in itertools.pairwise(inside)]
        assert all(g < min_pause_s for g in gaps), (end, gaps)


def _check_sentences(
    recording: Recording,
    verbose: dict[str, Any],
    short_texts: dict[str, str],
    label: str,
) -> None:
    heard = score(recording, verbose["words"])
    by_clip: dict[str, list[float]] = {}
    for h in heard:
        if not h.placed.at_mark:
            by_clip.setdefault(h.placed.clip.name, []).append(h.retention)
    for h in heard:
        if not h.placed.at_mark:
            continue
        elsewhere = by_clip.get(h.placed.clip.name, [])
        report(
            f"{label}: sentence at {h.placed.start_s:.1f}-{h.placed.end_s:.1f} s keeps "
            f"{h.retention:.0%} of its words (elsewhere in the file: "
            f"{', '.join(f'{r:.0%}' for r in elsewhere) or 'not placed'}); doubled: {h.doubled}"
        )
        # At least 90 %, or as much as the model hears of the same sentence elsewhere.
        assert h.retention >= min(0.9, *elsewhere), (h.placed, h.retention)
        assert not h.doubled, (h.placed, h.doubled)
    job_wer = word_error_rate(recording.text, verbose["text"])
    alone = " ".join(short_texts[p.clip.name] for p in recording.placed)
    short_wer = word_error_rate(recording.text, alone)
    report(
        f"{label}: WER job {job_wer:.4f} vs the same sentences as short requests {short_wer:.4f}"
    )
    assert job_wer <= short_wer + 0.02


# One database: the cutting is the same on both; the resume test below stores and reads
# the cut points on each.
@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.timeout(600)
async def test_sentences_across_chunk_boundaries_keep_their_words(
    env_factory: Factory, tmp_path: Path, short_texts: dict[str, str]
) -> None:
    """60 s chunks over 4m45s: marks at 60 and 180 s have pauses near, 120 and 240 s none."""
    marks = [60.0, 120.0, 180.0, 240.0]
    recording = build(285, marks, no_pause_s=[0, 20, 0, 20])
    path = recording.write_flac(tmp_path / "marks.flac")
    env: JobsEnv = await env_factory(chunk_s=60, cut_search_s=15, min_pause_s=0.5)
    job_id, seen = await _run(env, path)
    _check_progress(seen)
    verbose = await _verbose(env, job_id)
    _check_timeline(verbose, recording.duration_s)
    cuts = await _cut_points(env, job_id)
    report(f"{env.backend} 60 s chunks: boundaries (end, next start) {cuts}")
    _check_cuts(recording, cuts, search_s=15, min_pause_s=0.5)
    assert {end == start for end, start in cuts} == {True, False}  # both kinds of boundary
    _check_sentences(recording, verbose, short_texts, f"{env.backend} 60 s chunks")


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.timeout(900)
async def test_twenty_minutes_with_default_chunks(
    env_factory: Factory, tmp_path: Path, short_texts: dict[str, str]
) -> None:
    """The issue's case: 300 s chunks, a sentence on each 300 s mark; no pause near 600 s
    (for 80 s either side: cuts move earlier than the marks, so the search window is there)."""
    widths = [0, 80, 0]
    recording = build(1200, [300.0, 600.0, 900.0], no_pause_s=widths)
    path = recording.write_flac(tmp_path / "twenty.flac")
    env: JobsEnv = await env_factory(min_pause_s=0.5)
    started = asyncio.get_running_loop().time()
    job_id, seen = await _run(env, path)
    report(f"20 min job: {asyncio.get_running_loop().time() - started:.1f} s end to end")
    _check_progress(seen)
    verbose = await _verbose(env, job_id)
    _check_timeline(verbose, recording.duration_s)
    cuts = await _cut_points(env, job_id)
    report(f"20 min, 300 s chunks: boundaries (end, next start) {cuts}")
    _check_cuts(recording, cuts, search_s=30, min_pause_s=0.5)
    assert {end == start for end, start in cuts} == {True, False}  # both kinds of boundary
    _check_sentences(recording, verbose, short_texts, "20 min, 300 s chunks")


@pytest.mark.timeout(600)
async def test_a_job_stopped_mid_run_resumes_at_the_same_cuts(
    env_factory: Factory, tmp_path: Path
) -> None:
    recording = build(170, [40.0, 80.0, 120.0], no_pause_s=[0, 15, 0])
    path = recording.write_flac(tmp_path / "resume.flac")
    env: JobsEnv = await env_factory(chunk_s=40, cut_search_s=10, min_pause_s=0.5)
    whole_id, _ = await _run(env, path)
    whole, whole_cuts = await _verbose(env, whole_id), await _cut_points(env, whole_id)
    chunks = len(whole_cuts) + 1

    await env.stop_runner()
    counting = CountingTranscriber(env.transcriber)
    env.transcriber = counting
    await env.start_runner()
    job_id = (await env.submit(path)).json()["id"]
    for _ in range(3000):
        body = (await env.client.get(f"/v1/jobs/{job_id}")).json()
        if body["progress"]["done"] >= 2:
            break
        await asyncio.sleep(0.05)
    await env.stop_runner()  # the tracker dies mid-job
    stored = (await env.sql("SELECT count(*) FROM job_chunks WHERE job_id = :id", id=job_id))[0][0]
    assert 2 <= stored < chunks
    # A new incarnation whose setting differs: the job keeps the chunk length it started with.
    old_runtime = env.runner_runtime
    changed = env.settings.model_copy(
        update={"jobs": env.settings.jobs.model_copy(update={"chunk_s": 55.0})}
    )
    env.runner_runtime = build_resources(changed, nudge=lambda: None)
    await old_runtime.engine.dispose()
    counting.calls = 0
    await env.start_runner()
    done = await env.wait(job_id, timeout_s=300)
    assert done["status"] == "succeeded"
    assert await _cut_points(env, job_id) == whole_cuts
    resumed = await _verbose(env, job_id)
    assert resumed["text"] == whole["text"]
    assert resumed["words"] == whole["words"]
    assert counting.calls == chunks - stored  # stored chunks are not transcribed again
    report(
        f"{env.backend} resume: {chunks} chunks, {stored} stored before the stop, "
        f"{counting.calls} sent after; cut points and transcript identical"
    )


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.timeout(900)
async def test_two_hours_with_bounded_tracker_memory(env_factory: Factory, tmp_path: Path) -> None:
    """A sentence on every minute mark, silence between: run by a tracker in its own process
    (the model stays in this one, as it stays in the Whisper replica in production)."""
    marks = [60.0 * k for k in range(1, 120)]
    recording = build(7200, marks, fillers=())
    path = recording.write_flac(tmp_path / "two_hours.flac")
    jobs = {"chunk_s": 300.0}
    env: JobsEnv = await env_factory(start=False, **jobs)
    job_id = (await env.submit(path)).json()["id"]
    socket = str(tmp_path / "model.sock")
    server = await serve_model(socket, env.transcriber)
    args = {"data_dir": str(tmp_path), "jobs": jobs, "job_id": job_id, "socket": socket}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.jobs.tracker_process",
        json.dumps(args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout=840)
    finally:
        server.close()
    assert process.returncode == 0
    memory = json.loads(out.decode().strip().splitlines()[-1])
    report(
        f"2 h job: tracker RSS {memory['baseline_mb']:.0f} MB before, peak "
        f"{memory['peak_mb']:.0f} MB, growth {memory['growth_mb']:.0f} MB "
        f"(ru_maxrss growth {memory['maxrss_growth_mb']:.0f} MB)"
    )
    assert memory["growth_mb"] < 300
    assert memory["maxrss_growth_mb"] < 300
    body = (await env.client.get(f"/v1/jobs/{job_id}")).json()
    assert body["status"] == "succeeded"
    assert body["progress"]["done"] == body["progress"]["total"]
    verbose = await _verbose(env, job_id)
    _check_timeline(verbose, 7200)
    heard = score(recording, verbose["words"])
    mean = sum(h.retention for h in heard) / len(heard)
    report(
        f"2 h job: {len(heard)} sentences, mean retention {mean:.1%}, lowest "
        f"{min(h.retention for h in heard):.0%}"
    )
    assert mean >= 0.9
    poor = [(h.placed.start_s, h.retention, h.doubled) for h in heard if h.retention < 0.5]
    assert not poor  # each sentence is found where it was said
    # The sentences on the 300 s marks come out like the same sentences elsewhere, give or
    # take the one word tiny.en slips on now and then whatever the cut (CI at stop 20: "Cold
    # wind howled" at 4500 s kept 8 of 10 words, its cut in the pause 27 s before it; the
    # same sentence kept 9 or 10 elsewhere). A cut through a sentence costs half its words.
    on_marks = [h for h in heard if round((h.placed.start_s + h.placed.end_s) / 2) % 300 == 0]
    assert len(on_marks) == 23
    for h in on_marks:
        elsewhere = [
            o.retention for o in heard if o.placed.clip == h.placed.clip and o not in on_marks
        ]
        one_word = 1 / len(normalise(h.placed.clip.text).split())
        assert h.retention >= min(0.9, *elsewhere) - one_word, (h.placed, h.retention, elsewhere)
        assert not h.doubled, (h.placed, h.doubled)
    # Whisper may start a sentence's first word a little inside the pause before it (seen:
    # 0.56 s early after the stop-16 merge); a word further than 0.75 s from anything said
    # is one the model made up.
    spans = [(p.start_s - 0.75, p.end_s + 0.75) for p in recording.placed]
    stray = [w for w in verbose["words"] if not any(s <= w["start"] <= e for s, e in spans)]
    assert not stray  # no word at a time nothing was said
