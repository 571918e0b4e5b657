"""Every `rayscribe` command refuses bad usage with exit code 2 and a message that says
what is wrong, before any request is sent; a server that is not there is exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.cli import main
from tests.conftest import ENGLISH

CLIP = str(ENGLISH[0].path)
NOWHERE = "http://127.0.0.1:9"  # discard port: nothing listens


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


USAGE_ERRORS = [
    ((), "required"),
    (("frobnicate",), "invalid choice"),
    (("transcribe",), "required: FILE"),
    (("transcribe", "/no/such/file.wav"), "no such file: /no/such/file.wav"),
    (("transcribe", CLIP, "--format", "docx"), "invalid choice: 'docx'"),
    (("transcribe", CLIP, "--concurrency", "0"), "expected at least 1"),
    (("transcribe", CLIP, "--concurrency", "many"), "expected a whole number"),
    (("transcribe", CLIP, "--task", "summarise"), "invalid choice"),
    (("transcribe", CLIP, "--out", CLIP), "is not a directory"),
    (("transcribe", CLIP, "--server", "ftp://x"), "--server must be an http"),
    (("transcribe", CLIP, "--timeout", "-1"), "expected a number above 0"),
    (("jobs",), "required: ACTION"),
    (("jobs", "submit"), "required: FILE"),
    (("jobs", "submit", "/no/such.wav"), "no such file"),
    (("jobs", "status"), "required: id"),
    (("jobs", "status", "x", "--interval", "0"), "expected a number above 0"),
    (("jobs", "result"), "required: id"),
    (("jobs", "result", "x", "--format", "pdf"), "invalid choice"),
    (("jobs", "list", "--status", "done"), "invalid choice"),
    (("jobs", "list", "--limit", "101"), "--limit must be 1 to 100"),
    (("jobs", "cancel"), "required: id"),
    (("bulk",), "required: ACTION"),
    (("bulk", "submit", "--output", "/o"), "required: --input"),
    (("bulk", "submit", "--input", "/i"), "required: --output"),
    (("bulk", "submit", "--input", "/i", "--output", "/o", "--format", "csv"), "invalid choice"),
    (
        (
            "bulk",
            "submit",
            "--input",
            "/i",
            "--output",
            "/o",
            "--min-workers",
            "3",
            "--max-workers",
            "2",
        ),
        "--min-workers must not exceed --max-workers",
    ),
    (("bulk", "submit", "--input", "/i", "--output", "/o", "--num-gpus", "0"), "above 0"),
    (("bulk", "submit", "--input", "/i", "--output", "/o", "--num-speakers", "0"), "at least 1"),
    (
        ("bulk", "submit", "--input", "/i", "--output", "/o", "--speakers", "--num-speakers", "9"),
        "--num-speakers must be 1 to 8, got 9",
    ),
    (
        ("bulk", "submit", "--input", "/i", "--output", "/o", "--num-speakers", "2"),
        "needs --speakers",
    ),
    (("bulk", "status"), "required: id"),
    (("bulk", "list", "--state", "done"), "invalid choice"),
    (("bulk", "list", "--limit", "0"), "expected at least 1"),
    (("bulk", "logs"), "required: id"),
    (("bulk", "logs", "x", "--tail", "none"), "expected a whole number"),
    (("bulk", "stop"), "required: id"),
]


@pytest.mark.parametrize(("argv", "message"), USAGE_ERRORS, ids=lambda v: " ".join(v) or "none")
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    server = ("--server", NOWHERE) if len(argv) > 2 and "--server" not in argv else ()
    code, err = _run(capsys, *argv, *server)
    assert code == 2, err
    assert message in err
    assert "usage: rayscribe" in err


def test_help_is_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    code = _run(capsys, "bulk", "submit", "--help")[0]
    assert code == 0
    out = capsys.readouterr().out
    assert out == "" or "--min-workers" in out


@pytest.mark.parametrize(
    "argv",
    [
        ("transcribe", CLIP),
        ("jobs", "submit", CLIP),
        ("jobs", "status", "x"),
        ("jobs", "result", "x"),
        ("jobs", "list"),
        ("jobs", "cancel", "x"),
        ("bulk", "submit", "--input", "/i", "--output", "/o"),
        ("bulk", "status", "x"),
        ("bulk", "list"),
        ("bulk", "logs", "x"),
        ("bulk", "stop", "x"),
    ],
    ids=" ".join,
)
def test_no_server_is_exit_1_with_a_message(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], tmp_path: Path
) -> None:
    code, err = _run(capsys, *argv, "--server", NOWHERE, "--token", "s3cr3t-token-value")
    assert code == 1
    assert f"cannot reach {NOWHERE}" in err or "failed" in err
    assert "s3cr3t-token-value" not in err


def test_bulk_submit_sends_the_speaker_options() -> None:
    from cluster.cli import build_parser
    from cluster.cli_commands import _batch_options

    base = ["bulk", "submit", "--input", "/i", "--output", "/o"]
    plain = _batch_options(build_parser().parse_args(base))
    assert "speakers" not in plain
    assert "num_speakers" not in plain
    asked = _batch_options(build_parser().parse_args([*base, "--speakers", "--num-speakers", "3"]))
    assert (asked["speakers"], asked["num_speakers"]) == (True, 3)
