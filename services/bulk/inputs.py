"""What a bulk run reads: a directory, a glob, an `s3://` prefix or a manifest, as a list.

- A directory or an `s3://bucket/prefix`: every file under it (recursively) whose name ends
  in an audio extension; hidden files are left out. The id is the path under the root.
- A glob (`/data/**/*.wav`): the local files it matches; ids relative to its fixed part.
- A manifest (`.jsonl`, `.csv` or `.parquet`, local or on S3): one input per row, with a
  `path` column (local or `s3://`; relative paths are taken from the manifest's directory)
  and optional `language`, `prompt` and `id` columns.
- One audio file: itself.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from services.bulk.objects import Location, is_s3, list_files, read_bytes, resolve
from services.core.logging import get_logger
from services.core.settings import StorageSettings

log = get_logger(__name__)

AUDIO_EXTENSIONS = frozenset(
    {
        ".wav", ".wave", ".flac", ".mp3", ".mpga", ".mp2", ".m4a", ".mp4", ".mov", ".ogg",
        ".oga", ".opus", ".webm", ".mkv", ".mka", ".mpeg", ".mpg", ".aac",
    }
)  # fmt: skip
MANIFEST_EXTENSIONS = frozenset({".jsonl", ".ndjson", ".csv", ".parquet"})
MANIFEST_MAX_BYTES = 512 * 1024 * 1024


class InputError(ValueError):
    """The `--input` cannot be listed (nothing there, a bad manifest): the run cannot start."""


@dataclass(frozen=True)
class BulkInput:
    path: str
    """The file: an absolute local path or an `s3://bucket/key` URL."""
    id: str
    language: str | None = None
    prompt: str | None = None


def _extension(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _is_glob(location: str) -> bool:
    return any(ch in location for ch in "*?[")


def list_inputs(location: str, storage: StorageSettings) -> list[BulkInput]:
    """The inputs named by `--input`, in a stable order, each path once."""
    if _is_glob(location) and not is_s3(location):
        found = _from_glob(location)
    else:
        where = resolve(location, storage)
        info = where.fs.get_file_info(where.path)
        if info.type == pafs.FileType.Directory or (
            where.remote and info.type == pafs.FileType.NotFound
        ):
            found = _from_directory(where)
        elif info.type == pafs.FileType.File:
            if _extension(where.path) in MANIFEST_EXTENSIONS:
                found = _from_manifest(where, storage)
            else:
                found = [BulkInput(where.url, os.path.basename(where.path))]
        else:
            raise InputError(f"--input {location!r} does not exist")
    unique: dict[tuple[str, str | None, str | None], BulkInput] = {}
    for item in found:
        unique.setdefault((item.path, item.language, item.prompt), item)
    if len(unique) < len(found):
        log.warning("bulk_duplicate_inputs", dropped=len(found) - len(unique))
    return list(unique.values())


def _from_directory(where: Location) -> list[BulkInput]:
    root = where.path.rstrip("/") + "/"
    inputs, others = [], 0
    for info in sorted(list_files(where), key=lambda i: i.path):
        relative = info.path[len(root) :] if info.path.startswith(root) else info.base_name
        if any(part.startswith(".") for part in relative.split("/")):
            continue  # hidden files and our own temp files
        if _extension(info.base_name) not in AUDIO_EXTENSIONS:
            others += 1
            continue
        inputs.append(BulkInput(where.child(relative).url, relative))
    if others:
        log.info("bulk_inputs_not_audio_skipped", files=others, root=where.url)
    return inputs


def _from_glob(pattern: str) -> list[BulkInput]:
    pattern = os.path.abspath(os.path.expanduser(pattern))
    fixed = pattern
    while _is_glob(fixed):
        fixed = os.path.dirname(fixed)
    paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    return [BulkInput(p, os.path.relpath(p, fixed)) for p in paths]


def _from_manifest(where: Location, storage: StorageSettings) -> list[BulkInput]:
    rows = _manifest_rows(where)
    base = where.url.rsplit("/", 1)[0]
    inputs = []
    for number, row in enumerate(rows, start=1):
        path = row.get("path")
        if not isinstance(path, str) or not path.strip():
            raise InputError(f"manifest {where.url}: row {number} has no `path`")
        path = path.strip()
        if not is_s3(path) and not os.path.isabs(path):
            path = f"{base}/{path}" if is_s3(base) else os.path.join(base, path)
        if not is_s3(path):
            path = os.path.abspath(path)
        inputs.append(
            BulkInput(
                path=path,
                id=_text(row.get("id")) or _text(row.get("path")) or path,
                language=_text(row.get("language")),
                prompt=_text(row.get("prompt")),
            )
        )
    if not inputs:
        log.warning("bulk_manifest_empty", manifest=where.url)
    return inputs


def _manifest_rows(where: Location) -> list[dict[str, Any]]:
    data = read_bytes(where, max_bytes=MANIFEST_MAX_BYTES)
    extension = _extension(where.path)
    try:
        if extension == ".parquet":
            table = pq.read_table(io.BytesIO(data))
            if "path" not in table.column_names:
                raise InputError(f"manifest {where.url} has no `path` column")
            rows: list[dict[str, Any]] = table.to_pylist()
            return rows
        text = data.decode("utf-8-sig")
        if extension == ".csv":
            reader = csv.DictReader(io.StringIO(text))
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise InputError(f"manifest {where.url} has no `path` column")
            return [dict(row) for row in reader]
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise InputError(f"manifest {where.url}: line {number} is not an object")
                rows.append(row)
        return rows
    except InputError:
        raise
    except (ValueError, OSError, csv.Error) as exc:  # JSON, UTF-8 and pyarrow's errors
        raise InputError(f"manifest {where.url} cannot be read: {exc}") from exc


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None
