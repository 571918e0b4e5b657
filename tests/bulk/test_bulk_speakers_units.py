"""`--speakers` without Ray: the flags, the row key, splitting segments by speaker, a file
whose diarization fails, and the CPU budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.bulk import parse_args
from cluster.bulk_pipeline import plan_budget
from services.bulk.prepare import Preparer
from services.bulk.rows import RunOptions, file_options, speaker_options
from services.bulk.speakers import label_segments
from services.bulk.transcribe import BulkEngine
from services.core.settings import BulkSettings, Settings, StorageSettings
from services.diarization.pipeline import Turn
from services.transcription.domain import Waveform
from services.transcription.engine import WhisperEngine
from tests.conftest import ENGLISH

BASE = ["--input", "x", "--output", "y"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--speakers", "--num-speakers", "0"], "--num-speakers must be 1 to 8, got 0"),
        (["--speakers", "--num-speakers", "9"], "--num-speakers must be 1 to 8, got 9"),
        (["--num-speakers", "2"], "--num-speakers needs --speakers"),
        (["--speakers", "--num-speakers", "two"], "invalid int value"),
    ],
)
def test_bad_speaker_flags_exit_2(
    capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(BASE + extra)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_speakers_alone_or_with_a_count_are_fine() -> None:
    assert (parse_args([*BASE, "--speakers"]).num_speakers, parse_args(BASE).speakers) == (
        None,
        False,
    )
    assert parse_args([*BASE, "--speakers", "--num-speakers", "8"]).num_speakers == 8


def test_speakers_without_the_extra_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shadow = tmp_path / "shadow"  # a resemblyzer without its encoder weights
    (shadow / "resemblyzer").mkdir(parents=True)
    (shadow / "resemblyzer" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(shadow))
    with pytest.raises(SystemExit) as exited:
        parse_args([*BASE, "--speakers"])
    assert exited.value.code == 2
    assert "--speakers: the speaker encoder's weights are missing" in capsys.readouterr().err
    parse_args(BASE)  # a run without speakers does not care


def test_speakers_change_the_row_key_and_leave_other_keys_alone() -> None:
    plain = file_options(RunOptions(model="tiny.en"), language=None, prompt=None)
    assert set(json.loads(plain)) == {
        "task",
        "language",
        "prompt",
        "temperature",
        "word_timestamps",
    }
    asked = file_options(RunOptions(model="tiny.en", speakers=True), language=None, prompt=None)
    three = RunOptions(model="tiny.en", speakers=True, num_speakers=3)
    counted = file_options(three, language=None, prompt=None)
    assert len({plain, asked, counted}) == 3
    assert [speaker_options(o) for o in (plain, asked, counted)] == [
        (False, None),
        (True, None),
        (True, 3),
    ]


def _word(start: float, end: float, word: str) -> dict:
    return {"start": start, "end": end, "word": word, "probability": 0.9, "speaker": None}


def test_segments_split_where_the_speaker_changes() -> None:
    turns = [{"start": 0.0, "end": 2.0, "speaker": "A"}, {"start": 2.0, "end": 5.0, "speaker": "B"}]
    words = [_word(0.1, 0.5, " Hi"), _word(0.6, 1.9, " there."), _word(2.1, 2.5, " Hello.")]
    segment = {"id": 0, "start": 0.0, "end": 2.8, "text": " Hi there. Hello.", "avg_logprob": -0.2}
    later = {"id": 1, "start": 3.0, "end": 4.5, "text": " Bye.", "avg_logprob": -0.3}
    out = label_segments(
        [{**segment, "words": words}, {**later, "words": [_word(3.1, 4.4, " Bye.")]}], turns
    )
    assert [(s["id"], s["speaker"], s["text"], s["start"], s["end"]) for s in out] == [
        (0, "A", " Hi there.", 0.0, 1.9),
        (1, "B", " Hello.", 2.1, 2.8),
        (2, "B", " Bye.", 3.0, 4.5),
    ]
    assert [w["speaker"] for s in out for w in s["words"]] == ["A", "A", "B", "B"]
    assert out[1]["avg_logprob"] == -0.2  # a piece keeps its segment's figures
    # No turns at all (speech too short to embed): one speaker, as diarized_json says.
    assert {s["speaker"] for s in label_segments([{**later, "words": []}], [])} == {"A"}


class _BrokenLabeller:
    def diarize(self, audio: Waveform, num_speakers: int | None = None) -> list[Turn]:
        raise RuntimeError("the clustering ran out of memory")


def test_a_file_whose_diarization_fails_keeps_its_transcript_and_says_so(
    tiny_engine: WhisperEngine,
) -> None:
    options = file_options(RunOptions(model="tiny.en", speakers=True), language=None, prompt=None)
    preparer = Preparer(BulkSettings(), StorageSettings(), _BrokenLabeller())
    prepared = preparer.prepare({"path": str(ENGLISH[0].path), "id": "a", "options": options})
    assert prepared["diarization_error"].startswith("diarization_failed: RuntimeError(")
    assert prepared["items"]
    (row,) = BulkEngine(tiny_engine, model="tiny.en", subtitles=None).transcribe([prepared])
    assert row["error"].startswith("diarization_failed: ")
    assert row["text"]
    assert row["segments"]
    assert {s["speaker"] for s in row["segments"]} == {None}
    assert row["speaker_turns"] is None


def test_a_diarizing_preparer_asks_for_more_cpu_and_still_fits() -> None:
    settings = Settings(_env_file=None)
    roomy = plan_budget(
        settings, min_workers=1, max_workers=1, num_gpus=None, available_cpus=2, speakers=True
    )
    assert (roomy.prepare_num_cpus, roomy.engine_num_cpus) == (0.5, 1.0)
    tight = plan_budget(
        settings, min_workers=1, max_workers=1, num_gpus=None, available_cpus=1, speakers=True
    )
    assert tight.prepare_num_cpus + tight.engine_num_cpus <= 1
    assert tight.prepare_num_cpus > 0


def test_speech_past_the_cap_is_not_diarized(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap keeps clustering's memory (quadratic in windows) bounded; lowered here so a
    fixture clip is over it. The labeller would raise if it were called."""
    import services.bulk.prepare

    monkeypatch.setattr(services.bulk.prepare, "MAX_SPEECH_S", 1.0)
    options = file_options(RunOptions(model="tiny.en", speakers=True), language=None, prompt=None)
    preparer = Preparer(BulkSettings(), StorageSettings(), _BrokenLabeller())
    prepared = preparer.prepare({"path": str(ENGLISH[0].path), "id": "a", "options": options})
    assert prepared["items"]
    assert prepared["diarization_error"].startswith("diarization_failed: the file has ")
    assert "at most 1 s per file" in prepared["diarization_error"]
