"""Long recordings through jobs: cut at pauses (or overlapped), resumed at the same cuts.

Recordings are built at test time from the fixtures (`tests/long_audio.py`): read sentences
with pauses, one sentence centred on each nominal chunk boundary, and some boundaries with no
pause anywhere near (sentences joined back to back). The real tiny.en model transcribes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.transcription.local import LocalTranscriber
from services.transcription.models import DecodeOptions, TranscriptionOptions
from tests.conftest import ENGLISH, report, word_error_rate
from tests.jobs.conftest import JobsEnv
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
        assert h.retention >= 0.9, (h.placed, h.retention)
        assert not h.doubled, (h.placed, h.doubled)
    job_wer = word_error_rate(recording.text, verbose["text"])
    alone = " ".join(short_texts[p.clip.name] for p in recording.placed)
    short_wer = word_error_rate(recording.text, alone)
    report(
        f"{label}: WER job {job_wer:.4f} vs the same sentences as short requests {short_wer:.4f}"
    )
    assert job_wer <= short_wer + 0.02


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
