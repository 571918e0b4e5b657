"""`--speakers` on a directly started bulk run (its own local Ray): three flite conversations
of 2-3 recorded voices, built as tests/diarization builds them.

Every segment and word of every row has a speaker; each file has as many speakers as voices
in it; the row's `speaker_turns` are the turns the sync API's `diarized_json` is built on
(the same diarizer over the same audio) and score DER <= 5 % against who really spoke;
every word's speaker is the turn's at its midpoint, and the order of speakers is the sync
API's. Words agreeing with who really spoke is reported, with a looser bound: a word that
ends a turn can fall on the other side of the diarizer's 0.4 s resolution.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import wave
from itertools import groupby
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs the diarization extra")

from scipy.optimize import linear_sum_assignment

from services.diarization.metrics import der
from services.diarization.pipeline import Diarizer, Turn, speaker_at
from services.diarization.render import diarized_json
from services.transcription.audio import decode_audio
from services.transcription.domain import TranscriptionOptions
from services.transcription.engine import WhisperEngine
from tests.bulk.conftest import base_env, read_rows, run_bulk
from tests.conftest import report
from tests.diarization.conversations import conversation

CONVERSATIONS = {"two.wav": (2, 0.0, 2), "three.wav": (3, 0.0, 3), "two_gaps.wav": (2, 0.6, 5)}
"""File -> (voices, gap between turns in seconds, seed)."""


def _write_wav(path: Path, audio: np.ndarray) -> None:
    samples = np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(samples.tobytes())


def _accuracy(words: list[dict], truth: list[Turn]) -> float:
    """Share of words whose speaker is the voice speaking at their midpoint, with the
    row's speakers matched to the voices one to one (as DER matches them)."""
    pairs = [(w["speaker"], speaker_at(truth, w["start"], w["end"])) for w in words]
    found = sorted({p[0] for p in pairs})
    voices = sorted({p[1] for p in pairs})
    overlap = np.zeros((len(found), len(voices)))
    for mine, voice in pairs:
        overlap[found.index(mine), voices.index(voice)] += 1
    rows, cols = linear_sum_assignment(-overlap)
    return float(overlap[rows, cols].sum()) / max(1, len(pairs))


def _order(labels: list[str]) -> list[str]:
    """The speakers in turn, leaving out runs of a single word, then merging neighbours."""
    kept = [k for k, run in groupby(labels) if len(list(run)) > 1]
    return [k for k, _ in groupby(kept)]


def test_speakers_on_every_segment_as_the_sync_api_labels_them(
    tiny_engine: WhisperEngine, tmp_path: Path
) -> None:
    audio_dir = tmp_path / "calls"
    audio_dir.mkdir()
    truths: dict[str, list[Turn]] = {}
    for name, (voices, gap_s, seed) in CONVERSATIONS.items():
        audio, truths[name] = conversation(voices, gap_s=gap_s, seed=seed)
        _write_wav(audio_dir / name, audio)
    output = tmp_path / "out"
    env = base_env(tmp_path / "data")
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rss-", dir="/tmp")
    try:
        done = run_bulk(["--input", str(audio_dir), "--output", str(output), "--speakers"], env)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {Path(row["path"]).name: row for row in read_rows(str(output))}
    assert sorted(rows) == sorted(CONVERSATIONS)

    diarizer = Diarizer()
    for name, row in rows.items():
        assert row["error"] is None, row["error"]
        options = json.loads(row["options"])
        assert (options["speakers"], options["num_speakers"]) == (True, None)
        found = [Turn(t["start"], t["end"], t["speaker"]) for t in row["speaker_turns"]]
        segments = row["segments"]
        words = [w for s in segments for w in s["words"]]
        assert words
        assert all(s["speaker"] for s in segments), "every segment has a speaker"
        assert all(w["speaker"] == s["speaker"] for s in segments for w in s["words"])
        assert [s["id"] for s in segments] == list(range(len(segments)))
        voices = CONVERSATIONS[name][0]
        assert len({s["speaker"] for s in segments}) == voices, name
        assert segments[0]["speaker"] == "A"

        # The sync API's diarized_json: the same diarizer on the same decoded audio.
        audio = decode_audio(audio_dir / name, max_duration_s=60)
        turns = diarizer.diarize(audio)
        assert found == turns
        assert all(w["speaker"] == speaker_at(turns, w["start"], w["end"]) for w in words)
        online = tiny_engine.transcribe(audio, TranscriptionOptions(word_timestamps=True))
        sync = diarized_json(online, turns)
        # The order of speakers agrees with diarized_json's (runs of 2+ words: the engine
        # alone and the bulk run's shared windows may time a turn's last word differently).
        sync_words = [seg["speaker"] for seg in sync["segments"] for _ in seg["text"].split()]
        assert _order([w["speaker"] for w in words]) == _order(sync_words)

        error = der(truths[name], found)
        accuracy = _accuracy(words, truths[name])
        report(
            f"bulk --speakers {name}: {voices} voices, DER {error:.1%}, "
            f"{accuracy:.1%} of words labelled right"
        )
        assert error <= 0.05, name
        assert accuracy >= 0.9, name
