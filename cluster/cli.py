"""`rayscribe`: the command line for the rayscribe HTTP API.

    rayscribe transcribe FILE... [--server URL] [--format srt] [--out DIR] [--concurrency N]
    rayscribe jobs submit|status|result|list|cancel ...
    rayscribe bulk submit|status|list|logs|stop ...

The server comes from `--server` or `RAYSCRIBE_SERVER` (default http://127.0.0.1:8000), the
token from `--token` or `RAYSCRIBE_TOKEN`. Exit codes: 0 all good, 1 something failed (a file,
a job, a batch, or the server refused), 2 usage (argparse's own convention). Progress,
tables and messages go to stderr; transcripts, logs and `--json` output to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from cluster.cli_commands import bulk_command, jobs_command
from cluster.cli_http import ApiError, Target
from cluster.cli_transcribe import EXTENSIONS, summary, transcribe_files
from services.diarization.clustering import MAX_SPEAKERS

DEFAULT_SERVER = "http://127.0.0.1:8000"
FORMATS = list(EXTENSIONS)
OK, FAILED, USAGE = 0, 1, 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument(
        "--server",
        default=os.environ.get("RAYSCRIBE_SERVER", DEFAULT_SERVER),
        help="the API's base URL (env RAYSCRIBE_SERVER; default %(default)s)",
    )
    group.add_argument(
        "--token", default=None, help="bearer token (default: env RAYSCRIBE_TOKEN); never printed"
    )
    group.add_argument(
        "--timeout", type=_positive_float, default=600.0, help="seconds per HTTP request"
    )
    parser.add_argument("--json", action="store_true", help="print the server's JSON")


def _waiting(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="poll until it has finished")
    parser.add_argument(
        "--interval", type=_positive_float, default=2.0, help="seconds between polls"
    )
    parser.add_argument(
        "--wait-timeout", type=_positive_float, default=24 * 3600.0, help="give up after this long"
    )


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=_positive_int, default=20, help="rows per page (1-100)")
    parser.add_argument("--cursor", help="next_cursor of the previous page")


def _transcription_fields(parser: argparse.ArgumentParser, *, default_format: str) -> None:
    parser.add_argument("--model", default="whisper-1", help="model id (default %(default)s)")
    parser.add_argument("--language", help="language code, e.g. en (default: detected)")
    parser.add_argument("--task", choices=["transcribe", "translate"], default="transcribe")
    parser.add_argument("--format", choices=FORMATS, default=default_format, help="response format")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayscribe", description="Transcribe audio through a rayscribe server."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tr = commands.add_parser("transcribe", help="send files through the synchronous API")
    tr.add_argument("files", nargs="+", type=Path, metavar="FILE")
    _transcription_fields(tr, default_format="text")
    tr.add_argument("--out", type=Path, help="write one transcript per file into this directory")
    tr.add_argument("--concurrency", type=_positive_int, default=4, help="uploads in flight")
    _common(tr)

    jobs = commands.add_parser("jobs", help="asynchronous jobs (/v1/jobs)")
    job_actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    submit = job_actions.add_parser("submit", help="upload a file as a job")
    submit.add_argument("file", type=Path, metavar="FILE")
    _transcription_fields(submit, default_format="json")
    submit.add_argument("--idempotency-key", help="retries with the same key return the same job")
    _waiting(submit)
    status = job_actions.add_parser("status", help="a job's status")
    status.add_argument("id")
    _waiting(status)
    result = job_actions.add_parser("result", help="a finished job's transcript")
    result.add_argument("id")
    result.add_argument("--format", choices=FORMATS, help="another format than submitted")
    result.add_argument("--out", type=Path, help="write it to this file")
    listing = job_actions.add_parser("list", help="your jobs, newest first")
    listing.add_argument(
        "--status", choices=["queued", "running", "succeeded", "failed", "cancelled"]
    )
    _paging(listing)
    cancel = job_actions.add_parser("cancel", help="cancel a job (or delete a finished one's data)")
    cancel.add_argument("id")
    for sub in (submit, status, result, listing, cancel):
        _common(sub)

    bulk = commands.add_parser("bulk", help="bulk runs on the Ray cluster (/v1/batches)")
    bulk_actions = bulk.add_subparsers(dest="action", required=True, metavar="ACTION")
    bsubmit = bulk_actions.add_parser("submit", help="submit a batch")
    bsubmit.add_argument("--input", required=True, help="directory, glob, manifest or s3:// prefix")
    bsubmit.add_argument("--output", required=True, help="directory or s3:// prefix")
    bsubmit.add_argument("--format", choices=["parquet", "jsonl"], default="parquet")
    bsubmit.add_argument("--model")
    bsubmit.add_argument("--language")
    bsubmit.add_argument("--task", choices=["transcribe", "translate"], default="transcribe")
    bsubmit.add_argument("--subtitles", choices=["srt", "vtt"])
    bsubmit.add_argument("--min-workers", type=_positive_int, default=1)
    bsubmit.add_argument("--max-workers", type=_positive_int, default=1)
    bsubmit.add_argument("--num-gpus", type=_positive_float)
    bsubmit.add_argument("--force", action="store_true", help="redo files already done")
    bsubmit.add_argument(
        "--speakers", action="store_true", help="label speakers on segments and words"
    )
    bsubmit.add_argument(
        "--num-speakers", type=_positive_int, metavar="N", help="with --speakers: 1 to 8"
    )
    _waiting(bsubmit)
    bstatus = bulk_actions.add_parser("status", help="a batch's state and counts")
    bstatus.add_argument("id")
    _waiting(bstatus)
    blist = bulk_actions.add_parser("list", help="your batches, newest first")
    blist.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "stopped"])
    _paging(blist)
    blogs = bulk_actions.add_parser("logs", help="the last lines of a batch's Ray job log")
    blogs.add_argument("id")
    blogs.add_argument("--tail", type=_positive_int, default=200)
    bstop = bulk_actions.add_parser("stop", help="stop a batch")
    bstop.add_argument("id")
    for sub in (bsubmit, bstatus, blist, blogs, bstop):
        _common(sub)
    return parser


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse cannot see: files that are not there, an --out that is a file..."""
    if args.command == "transcribe":
        for file in args.files:
            if not file.is_file():
                parser.error(f"no such file: {file}")
        if args.out is not None and args.out.exists() and not args.out.is_dir():
            parser.error(f"--out {args.out} exists and is not a directory")
    if args.command == "jobs" and args.action == "submit" and not args.file.is_file():
        parser.error(f"no such file: {args.file}")
    if args.command == "jobs" and args.action == "list" and args.limit > 100:
        parser.error("--limit must be 1 to 100")
    if args.command == "bulk" and args.action == "submit" and args.min_workers > args.max_workers:
        parser.error("--min-workers must not exceed --max-workers")
    if args.command == "bulk" and args.action == "submit" and args.num_speakers is not None:
        if not args.speakers:
            parser.error("--num-speakers needs --speakers")
        if args.num_speakers > MAX_SPEAKERS:
            parser.error(f"--num-speakers must be 1 to {MAX_SPEAKERS}, got {args.num_speakers}")
    if args.command == "bulk" and args.action == "list" and args.limit > 100:
        parser.error("--limit must be 1 to 100")
    if not args.server.startswith(("http://", "https://")):
        parser.error(f"--server must be an http:// or https:// URL, got {args.server!r}")


def _transcribe(args: argparse.Namespace, target: Target, err: Console) -> int:
    fields = {"model": args.model, "response_format": args.format}
    if args.language and args.task == "transcribe":
        fields["language"] = args.language
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    outcomes = asyncio.run(
        transcribe_files(
            target,
            list(args.files),
            fields=fields,
            translate=args.task == "translate",
            out=args.out,
            concurrency=args.concurrency,
            console=err,
        )
    )
    for o in outcomes:
        if o.text is not None:
            if len(outcomes) > 1:
                sys.stdout.write(f"==> {o.file} <==\n")
            sys.stdout.write(o.text if o.text.endswith("\n") else o.text + "\n")
    err.print(summary(outcomes))
    return OK if all(o.ok for o in outcomes) else FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error, with argparse's message
    _check_usage(parser, args)
    token = args.token or os.environ.get("RAYSCRIBE_TOKEN") or None
    target = Target(server=args.server.rstrip("/"), token=token, timeout_s=args.timeout)
    err = Console(stderr=True)
    try:
        if args.command == "transcribe":
            return _transcribe(args, target, err)
        if args.command == "jobs":
            return jobs_command(args, target, err)
        return bulk_command(args, target, err)
    except ApiError as exc:
        err.print(f"rayscribe: {exc}", markup=False, highlight=False)
        return FAILED
    except OSError as exc:
        err.print(f"rayscribe: {exc}", markup=False, highlight=False)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
