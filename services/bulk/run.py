"""The driver's side of a bulk run, without Ray: what to do, and what to do with the rows.

`plan` lists the inputs, reads the keys of the rows earlier runs committed, and keeps only
the inputs without a row for (path, sha256, model, options): an input whose path, model and
options match an earlier row is hashed here to compare its sha256 (a changed file is
transcribed again); anything else goes to the pipeline, which hashes it while reading.
`Collector` takes the pipeline's rows as they come, writes subtitle sidecars, commits part
files, and keeps the counts the progress sink and the metrics see.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from services.bulk.inputs import BulkInput, list_inputs
from services.bulk.objects import resolve
from services.bulk.output import OutputDir, PartWriter, PreviousRow
from services.bulk.progress import BulkCounts, ProgressSink
from services.bulk.rows import RowKey, RunOptions, file_options
from services.core.logging import get_logger
from services.core.settings import StorageSettings

log = get_logger(__name__)

_HASH_CHUNK = 4 * 1024 * 1024
_HASH_THREADS = 8


@dataclass
class Plan:
    todo: list[dict[str, Any]]
    """Rows for the pipeline: path, id, options, language, prompt."""
    counts: BulkCounts
    """Totals before the pipeline runs: skipped inputs counted by how their row ended."""
    skipped: int


def sha256_or_none(path: str, storage: StorageSettings) -> str | None:
    """The file's sha256, or None when it does not exist (as its failed row recorded)."""
    location = resolve(path, storage)
    try:
        digest = hashlib.sha256()
        with location.fs.open_input_stream(location.path) as stream:
            while chunk := stream.read(_HASH_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()
    except (FileNotFoundError, IsADirectoryError):
        return None


def plan(
    input_location: str,
    output: OutputDir,
    run: RunOptions,
    storage: StorageSettings,
    *,
    force: bool,
) -> Plan:
    inputs = list_inputs(input_location, storage)
    if force:
        removed = output.remove_parts()
        log.info("bulk_force", parts_removed=removed)
    temps = output.remove_temps()
    if temps:
        log.info("bulk_temp_files_removed", files=temps)
    previous = {} if force else output.previous_rows()
    candidates: dict[tuple[str, str, str], None] = {
        (path, model, options): None for path, _, model, options in previous
    }
    entries = [
        (item, file_options(run, language=item.language, prompt=item.prompt)) for item in inputs
    ]
    to_hash = [item.path for item, opts in entries if (item.path, run.model, opts) in candidates]
    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        hashes = dict(
            zip(to_hash, pool.map(lambda p: sha256_or_none(p, storage), to_hash), strict=True)
        )
    counts = BulkCounts(total=len(inputs))
    todo: list[dict[str, Any]] = []
    for item, opts in entries:
        earlier = _earlier(previous, item, opts, run, hashes)
        if earlier is not None:
            counts = _counted(counts, failed=earlier.failed, audio_s=earlier.duration_s)
            continue
        todo.append(_row(item, opts))
    skipped = len(inputs) - len(todo)
    log.info("bulk_planned", inputs=len(inputs), to_process=len(todo), skipped=skipped)
    return Plan(todo=todo, counts=counts, skipped=skipped)


def _earlier(
    previous: dict[RowKey, PreviousRow],
    item: BulkInput,
    options: str,
    run: RunOptions,
    hashes: dict[str, str | None],
) -> PreviousRow | None:
    if item.path not in hashes:
        return None
    return previous.get((item.path, hashes[item.path], run.model, options))


def _row(item: BulkInput, options: str) -> dict[str, Any]:
    return {
        "path": item.path,
        "id": item.id,
        "options": options,
        "language": item.language,
        "prompt": item.prompt,
    }


def _counted(counts: BulkCounts, *, failed: bool, audio_s: float) -> BulkCounts:
    if failed:
        return replace(
            counts, failed=counts.failed + 1, audio_seconds=counts.audio_seconds + audio_s
        )
    return replace(counts, done=counts.done + 1, audio_seconds=counts.audio_seconds + audio_s)


RowObserver = Callable[[dict[str, Any]], None]


class Collector:
    """Rows in (as the pipeline yields them), committed parts and counts out."""

    def __init__(
        self,
        output: OutputDir,
        writer: PartWriter,
        counts: BulkCounts,
        sink: ProgressSink,
        *,
        subtitles: str | None,
        observe: RowObserver | None = None,
    ) -> None:
        self._output = output
        self._writer = writer
        self._subtitles = subtitles
        self._sink = sink
        self._observe = observe
        self.committed = counts
        self._pending = counts
        self.processed = 0

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            subtitles = row.pop("subtitles", None)
            if self._subtitles and subtitles:
                self._output.write_subtitles(str(row["id"]), self._subtitles, subtitles)
            self._pending = _counted(
                self._pending,
                failed=row["error"] is not None,
                audio_s=float(row["duration_s"] or 0.0),
            )
            if self._observe is not None:
                self._observe(row)
        self.processed += len(rows)
        if self._writer.add(rows):
            self._committed_now()

    def tick(self) -> None:
        """Commit rows that waited `part_max_age_s`, even if no new row came."""
        if self._writer.due() and self._writer.flush():
            self._committed_now()

    def close(self) -> None:
        if self._writer.flush():
            self._committed_now()

    def _committed_now(self) -> None:
        self.committed = self._pending
        self._sink.advanced(self.committed)
        c = self.committed
        log.info(
            "bulk_progress",
            total=c.total,
            done=c.done,
            failed=c.failed,
            audio_seconds=round(c.audio_seconds, 1),
        )
