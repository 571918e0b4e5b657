"""`rayscribe` against the running app (the real tiny.en engine in-process, served by uvicorn
on loopback, SQLite): `transcribe` on 10 files as a user runs it (a subprocess), a run with
a broken file among good ones, and the `jobs` commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import srt

from cluster.cli import main
from deployments.dependencies import build_ingress_resources
from deployments.fastapi_app import create_app
from services.core.settings import Settings
from services.migrations import upgrade as migrate
from services.resources import build_resources
from services.transcription.engine import WhisperEngine
from services.transcription.local import LocalTranscriber
from tests.conftest import ENGLISH, FIXTURES, report, word_error_rate
from tests.live_app import serve_on_loopback

ROOT = Path(__file__).resolve().parents[2]
TEN = ENGLISH[:10]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory, tiny_engine: WhisperEngine) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("cli-app")
    settings = Settings(_env_file=None, data_dir=data_dir, cache={"enabled": False})
    migrate(settings.database_url)
    runtime = build_resources(settings, nudge=lambda: None)
    app = create_app(build_ingress_resources(runtime, LocalTranscriber(tiny_engine)))
    with serve_on_loopback(app) as url:
        yield url


APP_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI in this process; the app's own log lines (same process) are left out."""
    code = main(list(argv))
    captured = capsys.readouterr()
    out = "".join(
        line for line in captured.out.splitlines(keepends=True) if not APP_LOG_LINE.match(line)
    )
    return code, out, captured.err


def test_transcribe_ten_files_to_srt(app_url: str, tmp_path: Path) -> None:
    out = tmp_path / "srt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160", "RAYSCRIBE_TOKEN": "unused"}
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "transcribe", *(str(c.path) for c in TEN),
         "--server", app_url, "--format", "srt", "--out", str(out), "--concurrency", "4"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "10 of 10 transcribed" in done.stderr
    assert "transcribing" in done.stderr  # the progress bar
    assert done.stdout == "", "with --out, transcripts go to files"
    rates = []
    for clip in TEN:
        subtitles = list(srt.parse((out / f"{clip.path.stem}.srt").read_text()))
        assert subtitles, clip.name
        rates.append(word_error_rate(clip.text, " ".join(s.content for s in subtitles)))
    mean = sum(rates) / len(rates)
    report(f"rayscribe transcribe, 10 files as SRT: mean WER {mean:.3f}")
    assert mean < 0.25


def test_a_broken_file_fails_alone(
    app_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(TEN[0].path), str(FIXTURES / "hostile" / "text.wav"), str(TEN[1].path)]
    argv = ["transcribe", *files, "--server", app_url, "--format", "json", "--out", str(tmp_path)]
    code, _, err = _run(capsys, *argv)
    assert code == 1
    assert "2 of 3 transcribed" in err
    assert "invalid_audio" in err or "HTTP 4" in err
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted([f"{TEN[0].path.stem}.json", f"{TEN[1].path.stem}.json"])
    assert json.loads((tmp_path / f"{TEN[0].path.stem}.json").read_text())["text"]


def test_transcribe_to_stdout(app_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "transcribe", str(TEN[2].path), "--server", app_url)
    assert code == 0
    assert word_error_rate(TEN[2].text, out) < 0.3


def test_jobs_commands(app_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """No tracker runs here: the job stays queued, so `result` is refused (exit 1)."""
    server = ("--server", app_url)
    code, out, err = _run(capsys, "jobs", "submit", str(TEN[3].path), "--json", *server)
    assert code == 0, err
    job = json.loads(out)
    assert job["status"] == "queued"
    code, out, _ = _run(capsys, "jobs", "status", job["id"], "--json", *server)
    assert code == 0
    assert json.loads(out)["id"] == job["id"]
    code, out, _ = _run(capsys, "jobs", "list", "--json", *server)
    assert job["id"] in [j["id"] for j in json.loads(out)["data"]]
    code, _, err = _run(capsys, "jobs", "result", job["id"], *server)
    assert code == 1
    assert "409" in err
    code, out, _ = _run(capsys, "jobs", "cancel", job["id"], "--json", *server)
    assert code == 0
    assert json.loads(out)["status"] == "cancelled"
    code, _, err = _run(capsys, "jobs", "status", "no-such-job", *server)
    assert code == 1
    assert "404" in err
