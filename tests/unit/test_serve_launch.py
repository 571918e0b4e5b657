"""Bad input to `python -m deployments.serve_launch`: a clear message and exit code 2,
before any setting is read or anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployments.serve_launch import main

ROOT = Path(__file__).resolve().parents[2]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


def test_no_arguments_or_no_config_print_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert "missing command and config\nusage: serve_launch {run|deploy|check}" in _refused(
        [], capsys
    )
    err = _refused(["run"], capsys)
    assert "missing config file after 'run'" in err
    assert "usage: serve_launch" in err


def test_an_unknown_command_names_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(["start", "serve_config.yaml"], capsys)
    assert "unknown command 'start': expected one of run, deploy, check" in err


def test_a_missing_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert f"config file not found: {missing}" in _refused(["check", str(missing)], capsys)


def test_bad_yaml_says_where(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("applications:\n  - name: rayscribe\n   route_prefix: [/\n")
    err = _refused(["check", str(bad)], capsys)
    assert f"config file {bad} is not valid YAML (line 3" in err
    assert "Traceback" not in err


def test_a_config_that_is_not_a_mapping_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = tmp_path / "list.yaml"
    listed.write_text("- applications\n")
    assert "must be a mapping" in _refused(["deploy", str(listed)], capsys)
    assert "got a list" in _refused(["deploy", str(listed)], capsys)


def test_the_module_exits_2_with_the_message(tmp_path: Path) -> None:
    """The real entry point (`python -m`), so the exit code is the process's."""
    launch = [sys.executable, "-m", "deployments.serve_launch", "check", str(tmp_path / "x.yaml")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(launch, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert "config file not found" in result.stderr
    assert "Traceback" not in result.stderr
