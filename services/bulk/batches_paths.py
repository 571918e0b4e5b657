"""Where a batch may read and write: under `bulk.allowed_roots`, nowhere else (403).

A client names paths the *service* will read and overwrite, so every path is judged the
way the Ray job will see it:
- `..` components are refused outright (no escapes by normalisation tricks);
- local paths must be absolute and are resolved with symlinks followed (`realpath`): a
  symlink under a root that points out of it is outside;
- a local directory or glob input is listed and every entry resolved the same way, and a
  manifest's `path` column is read and every row judged like an input path, so neither a
  planted symlink nor a manifest row can pull in a file from elsewhere;
- `s3://bucket/prefix` is under `s3://bucket/root` when the bucket is the same and the
  prefix's keys start with the root's, component by component.
Listing is blocking: callers run it in a thread.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass
from pathlib import PurePosixPath

from services.bulk.batches_errors import PathNotAllowedError
from services.core.errors import InvalidRequestError

MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".parquet")
GLOB_CHARS = "*?["
MAX_LISTED = 200_000
"""Most entries a local input may list at submission (beyond it, refused as too large)."""


@dataclass(frozen=True)
class Root:
    scheme: str  # "file" or "s3"
    parts: tuple[str, ...]  # bucket first for s3; resolved path components for files

    def holds(self, other: Root) -> bool:
        return self.scheme == other.scheme and other.parts[: len(self.parts)] == self.parts


def _refuse(param: str, value: str, why: str) -> PathNotAllowedError:
    return PathNotAllowedError(
        f"{param} {value[:200]!r} is not allowed: {why}. Batches may only read and write "
        "under the roots the service allows (bulk.allowed_roots).",
        param=param,
    )


def _check_syntax(param: str, value: str) -> None:
    if "\x00" in value or value != value.strip():
        raise InvalidRequestError(
            f"{param} must be a path without NUL or surrounding blanks.",
            param=param,
            code="invalid_value",
        )
    body = value[len("s3://") :] if value.startswith("s3://") else value
    if ".." in PurePosixPath(body).parts:
        raise _refuse(param, value, "'..' components are not accepted")


def _s3_root(param: str, value: str) -> Root:
    parts = tuple(p for p in value[len("s3://") :].split("/") if p not in ("", "."))
    if not parts:
        raise InvalidRequestError(
            f"{param} {value!r} names no bucket.", param=param, code="invalid_value"
        )
    return Root("s3", parts)


def _file_root(path: str) -> Root:
    return Root("file", PurePosixPath(os.path.realpath(path)).parts)


def parse_roots(roots: list[str]) -> list[Root]:
    parsed = []
    for root in roots:
        if root.startswith("s3://"):
            parsed.append(_s3_root("allowed_roots", root))
        else:
            parsed.append(_file_root(os.path.expanduser(root)))
    return parsed


class PathPolicy:
    def __init__(self, allowed_roots: list[str]) -> None:
        self._roots = parse_roots(allowed_roots)

    def _within(self, root: Root) -> bool:
        return any(allowed.holds(root) for allowed in self._roots)

    def _judge(self, param: str, value: str, path: str | None = None) -> None:
        """One location: an s3:// URL or a local path (resolved, symlinks followed)."""
        target = value if path is None else path
        if target.startswith("s3://"):
            if not self._within(_s3_root(param, target)):
                raise _refuse(param, value, "it is outside every allowed s3:// prefix")
            return
        if not os.path.isabs(target):
            raise InvalidRequestError(
                f"{param} {value[:200]!r} must be an absolute path or an s3:// URL.",
                param=param,
                code="invalid_value",
            )
        if not self._within(_file_root(target)):
            where = "it" if path is None else f"it holds {path[:200]!r}, which"
            raise _refuse(param, value, f"{where} resolves outside every allowed root")

    def check_output(self, output: str) -> None:
        if not self._roots:
            raise _refuse("output", output, "this service allows no batch roots")
        _check_syntax("output", output)
        self._judge("output", output)

    def check_input(self, value: str) -> None:
        """Blocking (lists local inputs and reads local manifests)."""
        if not self._roots:
            raise _refuse("input", value, "this service allows no batch roots")
        _check_syntax("input", value)
        if value.startswith("s3://"):
            self._judge("input", value)
            if value.lower().endswith(MANIFEST_SUFFIXES):
                # Its rows would name objects the service cannot see from here.
                raise _refuse("input", value, "manifests are read from local roots only")
            return
        if any(c in value for c in GLOB_CHARS):
            stem = value[: min(value.index(c) for c in GLOB_CHARS if c in value)]
            self._judge("input", value, os.path.dirname(stem) or "/")
            for count, match in enumerate(glob.iglob(value, recursive=True)):
                self._judge_entry(value, match, count)
            return
        self._judge("input", value)
        if os.path.isdir(value):
            for count, entry in enumerate(_walk(value)):
                self._judge_entry(value, entry, count)
        elif value.lower().endswith(MANIFEST_SUFFIXES) and os.path.isfile(value):
            base = os.path.dirname(value)
            for row in manifest_paths(value):
                _check_syntax("input", row)
                # A relative row is taken relative to the manifest, as the job reads it.
                is_local = not row.startswith("s3://")
                self._judge("input", value, os.path.join(base, row) if is_local else row)

    def _judge_entry(self, value: str, entry: str, count: int) -> None:
        if count >= MAX_LISTED:
            raise InvalidRequestError(
                f"input lists more than {MAX_LISTED} entries; split it or use a manifest.",
                param="input",
                code="invalid_value",
            )
        self._judge("input", value, entry)


def _walk(directory: str) -> list[str]:
    """Every entry under `directory` (symlinked directories are judged, not entered)."""
    found: list[str] = []
    for top, dirs, files in os.walk(directory):
        found.extend(os.path.join(top, name) for name in dirs + files)
        if len(found) > MAX_LISTED:
            break
    return found


def manifest_paths(path: str) -> list[str]:
    """The `path` column of a JSONL, CSV or Parquet manifest (400 when it has none)."""
    lower = path.lower()
    try:
        if lower.endswith(".jsonl"):
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            values = [row.get("path") if isinstance(row, dict) else None for row in rows]
        elif lower.endswith(".csv"):
            with open(path, encoding="utf-8", newline="") as f:
                values = [row.get("path") for row in csv.DictReader(f)]
        else:
            import pyarrow.parquet as pq

            values = pq.read_table(path, columns=["path"]).column("path").to_pylist()
    except (OSError, ValueError, KeyError, UnicodeError) as exc:
        raise InvalidRequestError(
            f"input {path[:200]!r} is not a readable manifest with a 'path' column: {exc}",
            param="input",
            code="invalid_manifest",
        ) from exc
    if any(not isinstance(value, str) or not value for value in values):
        raise InvalidRequestError(
            f"input {path[:200]!r}: every manifest row needs a non-empty 'path'.",
            param="input",
            code="invalid_manifest",
        )
    return [str(value) for value in values]
