"""`rayscribe transcribe FILE...`: many files through the synchronous HTTP API at once.

Up to `--concurrency` uploads are in flight (the server batches them across requests);
a progress bar on stderr counts files and audio, and a summary table on stderr lists each
file's outcome. Transcripts go to `--out DIR` (one file each, named after the input) or to
stdout. The exit code is 0 when every file was transcribed, 1 when any failed.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster.cli_http import ApiError, AsyncApi, Target

EXTENSIONS = {"json": "json", "verbose_json": "json", "text": "txt", "srt": "srt", "vtt": "vtt"}


@dataclass
class Outcome:
    file: Path
    ok: bool
    seconds: float
    audio_s: float | None = None
    written: Path | None = None
    text: str | None = None
    error: str | None = None


def _audio_seconds(body: str, response_format: str) -> float | None:
    if response_format not in ("json", "verbose_json"):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    usage = data.get("usage") if isinstance(data, dict) else None
    if isinstance(usage, dict) and isinstance(usage.get("seconds"), int | float):
        return float(usage["seconds"])
    duration = data.get("duration") if isinstance(data, dict) else None
    return float(duration) if isinstance(duration, int | float) else None


def output_names(files: list[Path], out: Path, response_format: str) -> dict[Path, Path]:
    """One output per input: `<stem>.<ext>`, made unique when two inputs share a stem."""
    ext = EXTENSIONS[response_format]
    names: dict[Path, Path] = {}
    taken: set[str] = set()
    for file in files:
        name, n = f"{file.stem}.{ext}", 1
        while name in taken:
            n += 1
            name = f"{file.stem}-{n}.{ext}"
        taken.add(name)
        names[file] = out / name
    return names


async def _one(
    api: AsyncApi,
    file: Path,
    fields: dict[str, str],
    endpoint: str,
    destination: Path | None,
    gate: asyncio.Semaphore,
) -> Outcome:
    async with gate:
        started = time.monotonic()
        try:
            data = await asyncio.to_thread(file.read_bytes)
            response = await api.post_file(endpoint, file.name, data, fields)
        except (ApiError, OSError) as exc:
            return Outcome(file, False, time.monotonic() - started, error=str(exc))
        elapsed = time.monotonic() - started
        body = response.text
        outcome = Outcome(file, True, elapsed, _audio_seconds(body, fields["response_format"]))
        if destination is None:
            outcome.text = body
        else:
            try:
                await asyncio.to_thread(destination.write_text, body)
            except OSError as exc:
                return Outcome(file, False, elapsed, error=f"cannot write {destination}: {exc}")
            outcome.written = destination
        return outcome


async def transcribe_files(
    target: Target,
    files: list[Path],
    *,
    fields: dict[str, str],
    translate: bool,
    out: Path | None,
    concurrency: int,
    console: Console,
) -> list[Outcome]:
    endpoint = "/v1/audio/translations" if translate else "/v1/audio/transcriptions"
    names = output_names(files, out, fields["response_format"]) if out is not None else {}
    gate = asyncio.Semaphore(concurrency)
    api = AsyncApi(target, concurrency)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    outcomes: list[Outcome] = []
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("transcribing", total=len(files))
            pending = [
                asyncio.ensure_future(_one(api, f, fields, endpoint, names.get(f), gate))
                for f in files
            ]
            for finished in asyncio.as_completed(pending):
                outcomes.append(await finished)
                progress.advance(task)
    finally:
        await api.aclose()
    order = {file: i for i, file in enumerate(files)}
    return sorted(outcomes, key=lambda o: order[o.file])


def summary(outcomes: list[Outcome]) -> Table:
    table = Table(title="rayscribe transcribe", show_lines=False)
    for column in ("file", "status", "audio s", "time s", "output / error"):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        audio = "" if o.audio_s is None else f"{o.audio_s:.1f}"
        where = str(o.written) if o.written else ("stdout" if o.ok else (o.error or ""))
        table.add_row(o.file.name, "ok" if o.ok else "failed", audio, f"{o.seconds:.1f}", where)
    good = sum(o.ok for o in outcomes)
    table.caption = f"{good} of {len(outcomes)} transcribed"
    return table
