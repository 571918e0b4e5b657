"""`rayscribe jobs ...` and `rayscribe bulk ...`: thin wrappers over the jobs and batches API.

Each command prints what the server returned (a short table, or the JSON with `--json`) and
returns an exit code: 0 when all is well, 1 when the server refused or the work failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cluster.cli_http import Api, Target

FINISHED_JOB = ("succeeded", "failed", "cancelled")
FINISHED_BATCH = ("succeeded", "failed", "stopped")


def _print(args: argparse.Namespace, out: Console, data: Any, table: Table | None) -> None:
    if args.json or table is None:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        out.print(table)


@dataclass(frozen=True)
class _Kind:
    """What `submit`/`status` need to know of a resource: where it lives, which field holds
    its state and which states are final, and how to show and judge one."""

    path: str
    field: str
    finished: tuple[str, ...]
    table: Callable[[dict[str, Any]], Table]
    failed: Callable[[dict[str, Any]], bool]


def _show(
    api: Api, args: argparse.Namespace, out: Console, kind: _Kind, item: dict[str, Any]
) -> int:
    """Print one job or batch (after waiting for it to finish with `--wait`); 1 if it failed."""
    if args.wait:
        item = _wait(api, f"{kind.path}/{item['id']}", kind.field, kind.finished, args, out)
    _print(args, out, item, kind.table(item))
    return 1 if kind.failed(item) else 0


def _fields_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in rows:
        table.add_row(name, "" if value is None else str(value))
    return table


# -- jobs -----------------------------------------------------------------------------------


def _job_table(job: dict[str, Any]) -> Table:
    progress = job.get("progress") or {}
    return _fields_table(
        f"job {job['id']}",
        [
            ("status", job.get("status")),
            ("model", job.get("model")),
            ("audio s", job.get("audio_duration_s")),
            ("progress", f"{progress.get('done')} / {progress.get('total')}"),
            ("attempts", job.get("attempts")),
            ("created", job.get("created_at")),
            ("finished", job.get("finished_at")),
            ("error", job.get("error")),
        ],
    )


def job_failed(job: dict[str, Any]) -> bool:
    return job.get("status") in ("failed", "cancelled")


JOBS = _Kind("/v1/jobs", "status", FINISHED_JOB, _job_table, job_failed)


def jobs_command(args: argparse.Namespace, target: Target, out: Console) -> int:
    with Api(target) as api:
        if args.action == "submit":
            fields = {"model": args.model, "task": args.task, "response_format": args.format}
            if args.language:
                fields["language"] = args.language
            headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
            file: Path = args.file
            with file.open("rb") as f:
                job = api.json(
                    "POST", "/v1/jobs", files={"file": (file.name, f)}, data=fields, headers=headers
                )
            return _show(api, args, out, JOBS, job)
        if args.action == "status":
            return _show(api, args, out, JOBS, api.json("GET", f"/v1/jobs/{args.id}"))
        if args.action == "result":
            params = {"response_format": args.format} if args.format else {}
            text = api.call("GET", f"/v1/jobs/{args.id}/result", params=params).text
            if args.out is not None:
                args.out.write_text(text)
                out.print(f"wrote {args.out}")
            else:
                sys.stdout.write(text if text.endswith("\n") else text + "\n")
            return 0
        if args.action == "list":
            params = _page_params(args, "status")
            page = api.json("GET", "/v1/jobs", params=params)
            _print(args, out, page, _jobs_list(page))
            return 0
        job = api.json("DELETE", f"/v1/jobs/{args.id}")  # cancel
        _print(args, out, job, _job_table(job))
        return 0


def _jobs_list(page: dict[str, Any]) -> Table:
    table = Table(title="jobs", caption=_next(page))
    for column in ("id", "status", "model", "audio s", "created"):
        table.add_column(column, overflow="fold")
    for job in page.get("data", []):
        table.add_row(
            job["id"], job["status"], job["model"], str(job.get("audio_duration_s") or ""),
            str(job["created_at"]),
        )  # fmt: skip
    return table


def _next(page: dict[str, Any]) -> str | None:
    cursor = page.get("next_cursor")
    return f"more: --cursor {cursor}" if cursor else None


def _page_params(args: argparse.Namespace, state_name: str) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": args.limit}
    if getattr(args, state_name, None):
        params[state_name] = getattr(args, state_name)
    if args.cursor:
        params["cursor"] = args.cursor
    return params


def _wait(
    api: Api,
    path: str,
    field: str,
    finished: tuple[str, ...],
    args: argparse.Namespace,
    out: Console,
) -> dict[str, Any]:
    """Poll until the resource reaches a finished state (or `--timeout` passes)."""
    deadline = time.monotonic() + args.wait_timeout
    last = None
    while True:
        data: dict[str, Any] = api.json("GET", path)
        line = _progress_line(data, field)
        if line != last:
            out.print(line)
            last = line
        if data.get(field) in finished or time.monotonic() > deadline:
            return data
        time.sleep(args.interval)


def _progress_line(data: dict[str, Any], field: str) -> str:
    counts = data.get("counts")
    if isinstance(counts, dict):
        return (
            f"{data['id']}: {data[field]}, {counts.get('done')} done, "
            f"{counts.get('failed')} failed of {counts.get('total')}, "
            f"{counts.get('audio_seconds')} audio-s"
        )
    progress = data.get("progress") or {}
    return f"{data['id']}: {data[field]}, chunks {progress.get('done')} / {progress.get('total')}"


# -- bulk -----------------------------------------------------------------------------------


def _batch_table(batch: dict[str, Any]) -> Table:
    counts = batch.get("counts") or {}
    return _fields_table(
        f"batch {batch['id']}",
        [
            ("state", batch.get("state")),
            ("input", batch.get("input")),
            ("output", batch.get("output")),
            ("total", counts.get("total")),
            ("done", counts.get("done")),
            ("failed", counts.get("failed")),
            ("audio s", counts.get("audio_seconds")),
            ("ray job", batch.get("ray_job_id")),
            ("created", batch.get("created_at")),
            ("finished", batch.get("finished_at")),
            ("error", batch.get("error")),
        ],
    )


def batch_failed(batch: dict[str, Any]) -> bool:
    counts = batch.get("counts") or {}
    return batch.get("state") in ("failed", "stopped") or bool(counts.get("failed"))


def _batch_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {
        "format": args.format,
        "task": args.task,
        "min_workers": args.min_workers,
        "max_workers": args.max_workers,
        "force": args.force,
    }
    if args.speakers:
        options["speakers"] = True
    for name in ("model", "language", "subtitles", "num_gpus", "num_speakers"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    return options


BATCHES = _Kind("/v1/batches", "state", FINISHED_BATCH, _batch_table, batch_failed)


def bulk_command(args: argparse.Namespace, target: Target, out: Console) -> int:
    with Api(target) as api:
        if args.action == "submit":
            body = {"input": args.input, "output": args.output, "options": _batch_options(args)}
            batch = api.json("POST", "/v1/batches", json=body)
            out.print(f"submitted batch {batch['id']} (Ray job {batch['ray_job_id']})")
            return _show(api, args, out, BATCHES, batch)
        if args.action == "status":
            return _show(api, args, out, BATCHES, api.json("GET", f"/v1/batches/{args.id}"))
        if args.action == "list":
            page = api.json("GET", "/v1/batches", params=_page_params(args, "state"))
            _print(args, out, page, _batches_list(page))
            return 0
        if args.action == "logs":
            text = api.call("GET", f"/v1/batches/{args.id}/logs", params={"tail": args.tail}).text
            sys.stdout.write(text)
            return 0
        batch = api.json("DELETE", f"/v1/batches/{args.id}")  # stop
        _print(args, out, batch, _batch_table(batch))
        return 0


def _batches_list(page: dict[str, Any]) -> Table:
    table = Table(title="batches", caption=_next(page))
    for column in ("id", "state", "done", "failed", "total", "output", "created"):
        table.add_column(column, overflow="fold")
    for b in page.get("data", []):
        c = b.get("counts") or {}
        table.add_row(
            b["id"], b["state"], str(c.get("done")), str(c.get("failed")), str(c.get("total")),
            b["output"], str(b["created_at"]),
        )  # fmt: skip
    return table
