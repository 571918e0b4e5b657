"""The pieces of a bulk run without Ray: listing, the two stages' logic, parts and resume,
the command line and the CPU budget."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.bulk import parse_args
from cluster.bulk_pipeline import plan_budget
from services.bulk.inputs import InputError, list_inputs
from services.bulk.objects import resolve
from services.bulk.output import OutputDir, PartWriter
from services.bulk.prepare import Preparer
from services.bulk.rows import RunOptions, failed_row, file_options
from services.bulk.run import plan
from services.bulk.transcribe import BulkEngine
from services.core.settings import BulkSettings, Settings, StorageSettings
from services.transcription.assembly import assemble
from services.transcription.audio import decode_audio
from services.transcription.domain import TranscriptionOptions
from services.transcription.engine import WhisperEngine
from tests.bulk.conftest import ROOT
from tests.conftest import ENGLISH, FIXTURES

LOCAL = StorageSettings()


def _tree(root: Path) -> Path:
    (root / "a" / "b").mkdir(parents=True)
    (root / "one.flac").write_bytes(b"x")
    (root / "a" / "two.MP3").write_bytes(b"x")
    (root / "a" / "b" / "three.wav").write_bytes(b"x")
    (root / "a" / "notes.txt").write_bytes(b"x")
    (root / ".hidden.wav").write_bytes(b"x")
    (root / ".part-0123456789ab-000001.parquet.deadbeef.tmp").write_bytes(b"x")
    return root


def test_a_directory_lists_audio_files_recursively_with_ids_under_the_root(tmp_path: Path) -> None:
    root = _tree(tmp_path / "in")
    found = list_inputs(str(root), LOCAL)
    assert [(i.id, i.path) for i in found] == [
        ("a/b/three.wav", str(root / "a/b/three.wav")),
        ("a/two.MP3", str(root / "a/two.MP3")),
        ("one.flac", str(root / "one.flac")),
    ]
    globbed = list_inputs(str(root / "**" / "*.wav"), LOCAL)
    assert [i.id for i in globbed] == ["a/b/three.wav"]


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_a_manifest_gives_paths_ids_languages_and_prompts(tmp_path: Path, kind: str) -> None:
    rows = [
        {"path": "rel/one.flac", "id": "first", "language": "de", "prompt": "Namen"},
        {"path": str(tmp_path / "abs.wav"), "id": None, "language": None, "prompt": None},
        {"path": "s3://bucket/key.mp3", "id": "remote", "language": "", "prompt": ""},
    ]
    manifest = tmp_path / f"manifest.{kind}"
    if kind == "jsonl":
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    elif kind == "csv":
        with manifest.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "id", "language", "prompt"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), manifest)
    found = list_inputs(str(manifest), LOCAL)
    assert [(i.path, i.id, i.language, i.prompt) for i in found] == [
        (str(tmp_path / "rel/one.flac"), "first", "de", "Namen"),
        (str(tmp_path / "abs.wav"), str(tmp_path / "abs.wav"), None, None),
        ("s3://bucket/key.mp3", "remote", None, None),
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("m.jsonl", '{"id": "x"}\n', "has no `path`"),
        ("m.jsonl", "{not json\n", "cannot be read"),
        ("m.jsonl", "[1, 2]\n", "is not an object"),
        ("m.csv", "file,id\na.wav,1\n", "no `path` column"),
        ("m.parquet", "not parquet", "cannot be read"),
    ],
)
def test_a_bad_manifest_stops_the_run_with_a_clear_message(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=message):
        list_inputs(str(tmp_path / name), LOCAL)


def test_an_input_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        list_inputs(str(tmp_path / "nothing"), LOCAL)


def test_the_two_stages_give_the_online_engines_text(tiny_engine: WhisperEngine) -> None:
    """Prepare (decode, VAD, items) then the engine on several files at once: each file's
    text is what the engine gives it alone, broken files fail alone."""
    preparer = Preparer(BulkSettings(), LOCAL)
    run = RunOptions(model="tiny.en")
    options = file_options(run, language=None, prompt=None)
    clips = ENGLISH[:4]
    inputs = [str(c.path) for c in clips] + [str(FIXTURES / "hostile" / "image.mp3")]
    prepared = [
        preparer.prepare({"path": p, "id": str(n), "options": options})
        for n, p in enumerate(inputs)
    ]
    assert prepared[-1]["error"].startswith("unsupported_media: ")
    assert all(row["items"] for row in prepared[:-1])
    rows = BulkEngine(tiny_engine, model="tiny.en", subtitles="srt").transcribe(prepared)
    assert [row["id"] for row in rows] == ["0", "1", "2", "3", "4"]
    # The Serve replica runs concurrent requests the same way: prepare each, one `run`.
    options_words = TranscriptionOptions(word_timestamps=True)
    online = [
        tiny_engine.prepare(decode_audio(c.path, max_duration_s=60), options_words) for c in clips
    ]
    results = tiny_engine.run([item for p in online for item in p.items])
    for clip, row, request in zip(clips, rows, online, strict=False):
        mine, results = results[: len(request.items)], results[len(request.items) :]
        expected = assemble(request, mine)
        assert row["text"] == expected.text, clip.name
        assert row["subtitles"].startswith("1\n00:00:0")
        assert [w["word"] for s in row["segments"] for w in s["words"]] == [
            w.word for w in expected.words
        ]
    assert rows[-1]["error"].startswith("unsupported_media: ")


def _row(path: str, options: str, error: str | None = None) -> dict:
    row = failed_row(path=path, id=path, model="tiny.en", options=options, error=error or "x: y")
    row["error"] = error
    return row


def test_parts_commit_by_rows_and_by_age_and_a_rerun_skips_their_keys(tmp_path: Path) -> None:
    output = OutputDir(resolve(str(tmp_path / "out"), LOCAL))
    writer = PartWriter(output, max_rows=3, max_age_s=0.2)
    run = RunOptions(model="tiny.en")
    options = file_options(run, language=None, prompt=None)
    audio = tmp_path / "in"
    audio.mkdir()
    for name in ("a.flac", "b.flac", "c.flac", "d.flac"):
        (audio / name).write_bytes(name.encode())
    assert writer.add([_row(str(audio / "a.flac"), options)]) == 0
    assert output.parts() == []
    time.sleep(0.3)
    assert writer.due()
    assert writer.flush() == 1
    assert writer.add([_row(str(audio / n), options) for n in ("b.flac", "c.flac")]) == 0
    assert writer.add([_row(str(audio / "d.flac"), options, error="invalid_audio: no")]) == 3
    assert len(output.parts()) == 2
    (tmp_path / "out" / ".part-0123456789ab-000009.parquet.0badc0de.tmp").write_bytes(b"half")
    (tmp_path / "out" / "README.txt").write_text("someone else's file")
    # The rows above have no sha256: the files' hashes differ, so everything is redone...
    work = plan(str(audio), OutputDir(output.location), run, LOCAL, force=False)
    assert len(work.todo) == 4
    assert not (tmp_path / "out" / ".part-0123456789ab-000009.parquet.0badc0de.tmp").exists()
    # ...while rows with the right sha256 are skipped and counted by how they ended.
    import hashlib

    rows = []
    for name in ("a.flac", "b.flac", "c.flac"):
        row = _row(
            str(audio / name), options, error="invalid_audio: no" if name == "c.flac" else None
        )
        row["sha256"] = hashlib.sha256(name.encode()).hexdigest()
        rows.append(row)
    OutputDir(output.location, format="jsonl").write_part(1, rows)
    work = plan(str(audio), OutputDir(output.location), run, LOCAL, force=False)
    assert [r["path"] for r in work.todo] == [str(audio / "d.flac")]
    assert (work.counts.total, work.counts.done, work.counts.failed) == (4, 2, 1)
    forced = plan(str(audio), OutputDir(output.location), run, LOCAL, force=True)
    assert len(forced.todo) == 4
    assert output.parts() == []
    assert (tmp_path / "out" / "README.txt").exists()


def test_the_command_line_refuses_bad_flags_with_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["--input", "x", "--output", "y"]
    for extra, message in [
        (["--min-workers", "0"], "--min-workers must be at least 1"),
        (["--min-workers", "3", "--max-workers", "2"], "--max-workers must be at least"),
        (["--language", "klingon"], "not an ISO-639-1 code"),
        (["--num-gpus", "0"], "--num-gpus must be positive"),
        (["--format", "csv"], "invalid choice"),
    ]:
        with pytest.raises(SystemExit) as exited:
            parse_args(base + extra)
        assert exited.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--output", "y"])
    args = parse_args([*base, "--min-workers", "2"])
    assert (args.min_workers, args.max_workers) == (2, 2)


def test_help_documents_every_flag() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "cluster.bulk", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0
    for flag in ("--input", "--output", "--format", "--model", "--language", "--task",
                 "--subtitles", "--min-workers", "--max-workers", "--num-gpus", "--force",
                 "--batch-id", "--speakers", "--num-speakers"):  # fmt: skip
        assert flag in shown.stdout


def test_a_missing_input_fails_the_run_with_status_1(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cluster.bulk", "--input", str(tmp_path / "no"), "--output", "o"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "does not exist" in done.stderr


def test_the_cpu_budget_fits_what_is_free() -> None:
    settings = Settings(_env_file=None)
    roomy = plan_budget(settings, min_workers=2, max_workers=4, num_gpus=1, available_cpus=16)
    assert (roomy.prepare_num_cpus, roomy.engine_num_cpus) == (0.25, 1.0)
    assert (roomy.prepare_workers, roomy.engine_workers, roomy.num_gpus) == ((1, 4), (2, 4), 1)
    tight = plan_budget(settings, min_workers=1, max_workers=1, num_gpus=None, available_cpus=0.5)
    assert tight.prepare_num_cpus + tight.engine_num_cpus <= 0.5
    assert tight.engine_num_cpus > tight.prepare_num_cpus > 0
    held = plan_budget(settings, min_workers=1, max_workers=1, num_gpus=None, available_cpus=0)
    assert (held.prepare_num_cpus, held.engine_num_cpus) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("ending", "flushed"),
    [("RuntimeError('worker lost')", True), ("SystemExit('stopped by signal 15')", False)],
)
def test_a_run_that_fails_midway_still_flushes_its_metrics(
    tmp_path: Path, ending: str, flushed: bool
) -> None:
    """Rows counted before a crash reach Prometheus only if the driver waits for Ray's
    agent; after `ray job stop` (SystemExit from SIGTERM) Ray kills it too soon to wait."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.flac").write_bytes(ENGLISH[0].path.read_bytes())
    script = (
        "import cluster.bulk as b\n"
        "def crash(*args, **kwargs):\n"
        f"    raise {ending}\n"
        "b._run_pipeline = crash\n"
        f"b.main(['--input', {str(tmp_path / 'in')!r}, '--output', {str(tmp_path / 'out')!r}])\n"
    )
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1", "RAYSCRIBE_BULK__METRICS_FLUSH_S": "0.01"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert "bulk_failed" in done.stderr
    assert ("bulk_metrics_flush" in done.stderr) is flushed, done.stderr[-2000:]
