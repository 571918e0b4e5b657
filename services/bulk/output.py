"""The output directory (or `s3://` prefix) of a bulk run: part files, sidecars, resume.

Rows are committed in part files, `part-<run>-<n>.parquet` (or `.jsonl`), each written
whole and made visible at once (`objects.write_atomically`: a temp name and a rename
locally, one completed upload on S3). So every visible part is complete, a killed run
leaves at most a hidden temp file (removed by the next run), and readers (pandas, pyarrow,
Spark, DuckDB) never see half a file: they skip names starting with `.` and `_`.

A rerun reads the key columns of the complete parts it finds to learn which inputs are
done; `--force` removes the old parts first (only files named like ours).
"""

from __future__ import annotations

import io
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from services.bulk.objects import Location, list_files, write_atomically
from services.bulk.rows import KEY_COLUMNS, RowKey, key_of, to_json_line, to_table
from services.core.logging import get_logger

log = get_logger(__name__)

OutputFormat = Literal["parquet", "jsonl"]
PART_NAME = re.compile(r"^part-[0-9a-f]{12}-\d{6}\.(parquet|jsonl)$")
TEMP_NAME = re.compile(r"^\.part-[0-9a-f]{12}-\d{6}\.(parquet|jsonl)\.[0-9a-f]{8}\.tmp$")
SUBTITLES_DIR = "_subtitles"
"""Beside the parts, named so table readers (which skip `_` and `.` names) never open it."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class PreviousRow:
    failed: bool
    duration_s: float


@dataclass
class OutputDir:
    location: Location
    format: OutputFormat = "parquet"
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def _top_level(self) -> Iterator[pafs.FileInfo]:
        selector = pafs.FileSelector(self.location.path, recursive=False, allow_not_found=True)
        for info in self.location.fs.get_file_info(selector):
            if info.is_file:
                yield info

    def parts(self) -> list[pafs.FileInfo]:
        return sorted(
            (i for i in self._top_level() if PART_NAME.match(i.base_name)), key=lambda i: i.path
        )

    def remove_temps(self) -> int:
        """Delete what a killed run left half-written (local only: S3 shows no such thing)."""
        removed = 0
        for info in self._top_level():
            if TEMP_NAME.match(info.base_name):
                self.location.fs.delete_file(info.path)
                removed += 1
        return removed

    def remove_parts(self) -> int:
        """`--force`: forget the earlier runs' rows (and their subtitle files)."""
        parts = self.parts()
        for info in parts:
            self.location.fs.delete_file(info.path)
        subtitles = self.location.child(SUBTITLES_DIR)
        for info in list_files(subtitles):
            self.location.fs.delete_file(info.path)
        return len(parts)

    def previous_rows(self) -> dict[RowKey, PreviousRow]:
        """The key of every row in a complete part (any format), and how it ended."""
        done: dict[RowKey, PreviousRow] = {}
        for info in self.parts():
            for row in self._read_keys(info):
                done[key_of(row)] = PreviousRow(
                    failed=row.get("error") is not None,
                    duration_s=float(row.get("duration_s") or 0.0),
                )
        return done

    def _read_keys(self, info: pafs.FileInfo) -> list[dict[str, Any]]:
        if info.base_name.endswith(".parquet"):
            table = pq.read_table(info.path, columns=list(KEY_COLUMNS), filesystem=self.location.fs)
            rows: list[dict[str, Any]] = table.to_pylist()
            return rows
        with self.location.fs.open_input_stream(info.path) as stream:
            text = stream.read().decode("utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def write_part(self, number: int, rows: list[dict[str, Any]]) -> str:
        name = f"part-{self.run_id}-{number:06d}.{self.format}"
        if self.format == "parquet":
            buffer = io.BytesIO()
            pq.write_table(to_table(rows), buffer, compression="zstd")
            data = buffer.getvalue()
        else:
            data = "".join(to_json_line(row) + "\n" for row in rows).encode("utf-8")
        target = self.location.child(name)
        write_atomically(target, data)
        return target.url

    def write_subtitles(self, file_id: str, extension: str, text: str) -> None:
        name = _UNSAFE.sub("_", file_id).strip("._") or "file"
        target = self.location.child(SUBTITLES_DIR).child(f"{name}.{extension}")
        write_atomically(target, text.encode("utf-8"))


class PartWriter:
    """Collects finished rows and commits them as parts: by count or by age."""

    def __init__(self, output: OutputDir, *, max_rows: int, max_age_s: float) -> None:
        self._output = output
        self._max_rows = max_rows
        self._max_age_s = max_age_s
        self._rows: list[dict[str, Any]] = []
        self._oldest: float | None = None
        self._parts = 0
        self.rows_written = 0

    def add(self, rows: list[dict[str, Any]]) -> int:
        """Queue rows; returns how many rows were committed by this call."""
        if rows and self._oldest is None:
            self._oldest = time.monotonic()
        self._rows.extend(rows)
        if len(self._rows) >= self._max_rows or self.due():
            return self.flush()
        return 0

    def due(self) -> bool:
        return self._oldest is not None and time.monotonic() - self._oldest >= self._max_age_s

    def flush(self) -> int:
        if not self._rows:
            return 0
        rows, self._rows, self._oldest = self._rows, [], None
        self._parts += 1
        url = self._output.write_part(self._parts, rows)
        self.rows_written += len(rows)
        log.info("bulk_part_written", part=url, rows=len(rows))
        return len(rows)
