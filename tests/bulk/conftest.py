"""Bulk tests: the generated corpus, the online engine's transcripts of it, and helpers to
run and read a bulk run.

Every run is a real `python -m cluster.bulk` process. The Ray head with token auth and the
dashboard (for `ray job submit`) is the session's shared one (`ray_head` in tests/conftest.py,
tests/ray_head.py), which carries the S3 server's variables and the bulk settings below.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest

from services.bulk.objects import resolve
from services.core.settings import StorageSettings
from services.transcription.audio import decode_audio
from services.transcription.domain import TranscriptionOptions
from services.transcription.engine import WhisperEngine
from tests.bulk.corpus import MAX_DURATION_S, Corpus, build
from tests.ray_head import BULK_TEST_SETTINGS, job_environment
from tests.ray_head import ROOT as ROOT
from tests.ray_head import VENV_BIN as VENV_BIN  # for the cluster tests
from tests.ray_head import RayHead as RayHead

RUN_TIMEOUT_S = 900


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build(tmp_path_factory.mktemp("bulk-corpus") / "audio")


@pytest.fixture(scope="session")
def online_texts(corpus: Corpus, tiny_engine: WhisperEngine) -> dict[str, str]:
    """What the online engine (the in-process reference of the Serve path) hears in each
    good file of the corpus."""
    texts = {}
    for name in corpus.expected:
        audio = decode_audio(corpus.root / name, max_duration_s=MAX_DURATION_S)
        texts[name] = tiny_engine.transcribe(audio, TranscriptionOptions()).text
    return texts


def base_env(data_dir: Path) -> dict[str, str]:
    """A bulk run's environment: this checkout first, small parts, the tests' cap."""
    env = job_environment()
    env.update(
        RAYSCRIBE_DATA_DIR=str(data_dir),
        RAYSCRIBE_BULK__MAX_DURATION_S=str(MAX_DURATION_S),
        RAYSCRIBE_BULK__PART_MAX_AGE_S=str(BULK_TEST_SETTINGS["part_max_age_s"]),
        RAYSCRIBE_BULK__FILES_PER_CALL=str(BULK_TEST_SETTINGS["files_per_call"]),
        RAYSCRIBE_BULK__METRICS_FLUSH_S=str(BULK_TEST_SETTINGS["metrics_flush_s"]),
    )
    return env


assert BULK_TEST_SETTINGS["max_duration_s"] == MAX_DURATION_S, "the shared head's cap is ours"


def run_bulk(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.bulk", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def start_bulk(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cluster.bulk", *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def events(output: str, name: str) -> list[dict[str, Any]]:
    """The JSON log lines of one event in a run's output."""
    found = []
    for line in output.splitlines():
        start = line.find('{"')
        if start < 0 or f'"event": "{name}"' not in line:
            continue
        try:
            found.append(json.loads(line[start:]))
        except json.JSONDecodeError:
            continue
    return found


def read_rows(output: str, storage: StorageSettings | None = None) -> list[dict[str, Any]]:
    """Every committed row, read as a data engineer would (pyarrow's dataset reader)."""
    where = resolve(output, storage or StorageSettings())
    dataset = pads.dataset(where.path, filesystem=where.fs, format="parquet")
    rows: list[dict[str, Any]] = dataset.to_table().to_pylist()
    return rows


def part_names(output: str, storage: StorageSettings | None = None) -> list[str]:
    from services.bulk.output import OutputDir

    return [i.base_name for i in OutputDir(resolve(output, storage or StorageSettings())).parts()]
