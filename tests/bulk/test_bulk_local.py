"""A bulk run on local files, started directly (`python -m cluster.bulk`, its own local Ray).

The input is a JSONL manifest of the generated corpus (41 good files, 3 broken ones) plus a
file that does not exist; the rows must hold the right text (WER within 0.02 of the online
engine on the same files), the broken files rows with their errors, and a rerun must
process nothing again.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from tests.bulk.conftest import base_env, events, part_names, read_rows, run_bulk
from tests.bulk.corpus import Corpus, corpus_wer
from tests.conftest import report

MISSING = "gone/never_there.flac"


def _manifest(corpus: Corpus, path: Path) -> Path:
    lines = [
        {"path": name, "id": f"clip-{n:03d}"} for n, name in enumerate(sorted(corpus.expected))
    ]
    lines += [{"path": name, "id": name} for name in corpus.broken]
    lines.append({"path": MISSING, "id": "missing", "language": "en"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def check_rows(
    rows: list[dict], corpus: Corpus, root: str, online: dict[str, str], label: str
) -> None:
    """One row per input, good ones transcribed as well as online, broken ones with errors."""
    by_path = {row["path"]: row for row in rows}
    assert len(by_path) == len(rows), "a path has two rows"
    for name, code in corpus.broken.items():
        row = by_path[f"{root}/{name}"]
        assert (row["error"] or "").startswith(f"{code}: "), row["error"]
        assert row["text"] is None
        assert row["segments"] is None
    good = [by_path[f"{root}/{name}"] for name in corpus.expected]
    assert [row["error"] for row in good] == [None] * len(good)
    for row in good:
        assert row["model"] == "tiny.en"
        assert row["language"] == "en"
        assert len(row["sha256"]) == 64
        assert row["duration_s"] > 0
        assert row["processed_at"] is not None
        assert json.loads(row["options"])["word_timestamps"]
        for segment in row["segments"]:
            assert segment["words"], "segments carry their words"
            assert 0 <= segment["start"] <= segment["end"] <= row["duration_s"] + 0.01
    names = list(corpus.expected)
    bulk_wer = corpus_wer(
        [corpus.expected[n] for n in names], [by_path[f"{root}/{n}"]["text"] for n in names]
    )
    online_wer = corpus_wer([corpus.expected[n] for n in names], [online[n] for n in names])
    report(
        f"bulk {label}: WER {bulk_wer:.3f} vs online engine {online_wer:.3f} on {len(names)} files"
    )
    assert bulk_wer <= online_wer + 0.02
    assert by_path[f"{root}/silence.flac"]["text"] == ""


def test_a_directly_started_run_transcribes_every_file_and_a_rerun_does_nothing(
    corpus: Corpus, online_texts: dict[str, str], tmp_path: Path
) -> None:
    manifest = _manifest(corpus, corpus.root / "manifest.jsonl")
    output = tmp_path / "out"
    env = base_env(tmp_path / "data")
    # Its own local Ray, in a temp dir of its own (short: Ray's socket paths must fit 107 bytes).
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rsl-", dir="/tmp")
    args = ["--input", str(manifest), "--output", str(output), "--subtitles", "vtt"]

    try:
        _run_twice(corpus, online_texts, output, args, env)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def _run_twice(
    corpus: Corpus, online_texts: dict[str, str], output: Path, args: list[str], env: dict[str, str]
) -> None:
    first = run_bulk(args, env)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = read_rows(str(output))
    assert len(rows) == corpus.count + 1
    check_rows(rows, corpus, str(corpus.root), online_texts, "local")
    by_id = {row["id"]: row for row in rows}
    assert by_id["missing"]["error"].startswith("file_not_found: ")
    assert by_id["missing"]["path"] == str(corpus.root / MISSING)
    assert Counter(row["id"] for row in rows).most_common(1)[0][1] == 1
    vtt = (output / "_subtitles" / "clip-000.vtt").read_text()
    assert vtt.startswith("WEBVTT")
    assert "-->" in vtt
    (finished,) = events(first.stderr, "bulk_finished")
    assert (finished["total"], finished["done"], finished["failed"]) == (
        corpus.count + 1,
        len(corpus.expected),
        4,
    )
    assert "MapBatches(EngineStage)" in first.stderr  # Ray Data's progress in the log
    parts = part_names(str(output))
    stamps = {p: (output / p).stat().st_mtime_ns for p in parts}

    again = run_bulk(args, env)
    assert again.returncode == 0, again.stderr[-3000:]
    (planned,) = events(again.stderr, "bulk_planned")
    assert planned["to_process"] == 0
    assert planned["skipped"] == corpus.count + 1
    assert "Started a local Ray" not in again.stderr  # nothing to do: no Ray at all
    assert {p: (output / p).stat().st_mtime_ns for p in part_names(str(output))} == stamps
    (finished,) = events(again.stderr, "bulk_finished")
    assert finished["done"] == len(corpus.expected)
    assert finished["failed"] == 4
