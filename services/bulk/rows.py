"""One output row per input file: its schema, how it is built, and the key that says "done".

A row is the same whether the file was transcribed or failed: a failure has `error`
("code: message") and nulls where the transcript would be. The key of a row is
(path, sha256, model, options): a rerun skips an input whose key already has a row, so a
changed file, another model or other options are transcribed again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from services.transcription.domain import DecodeOptions, Task, Transcript, TranscriptionOptions

WORD = pa.struct(
    [
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("word", pa.string()),
        ("probability", pa.float64()),
        ("speaker", pa.string()),
    ]
)
SEGMENT = pa.struct(
    [
        ("id", pa.int32()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("text", pa.string()),
        ("avg_logprob", pa.float64()),
        ("compression_ratio", pa.float64()),
        ("no_speech_prob", pa.float64()),
        ("temperature", pa.float64()),
        ("speaker", pa.string()),
        ("words", pa.list_(WORD)),
    ]
)
TURN = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("speaker", pa.string())])
SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        ("id", pa.string()),
        ("sha256", pa.string()),
        ("duration_s", pa.float64()),
        ("language", pa.string()),
        ("text", pa.string()),
        ("segments", pa.list_(SEGMENT)),
        ("speaker_turns", pa.list_(TURN)),
        ("model", pa.string()),
        ("options", pa.string()),
        ("error", pa.string()),
        ("processed_at", pa.timestamp("us", tz="UTC")),
    ]
)
KEY_COLUMNS = ("path", "sha256", "model", "options", "error", "duration_s")

RowKey = tuple[str, str | None, str, str]


@dataclass(frozen=True)
class RunOptions:
    """What the whole run asks for (`--model`, `--task`, `--language`, `--speakers`)."""

    model: str
    task: Task = Task.TRANSCRIBE
    language: str | None = None
    speakers: bool = False
    num_speakers: int | None = None


def file_options(run: RunOptions, *, language: str | None, prompt: str | None) -> str:
    """The options one file is transcribed with, as canonical JSON (part of its key).

    `speakers` (and `num_speakers`) appear only when asked for, so the keys of rows written
    without speaker labels stay what they were."""
    options: dict[str, Any] = {
        "task": run.task.value,
        "language": language or run.language,
        "prompt": prompt,
        "temperature": 0.0,
        "word_timestamps": True,
    }
    if run.speakers:
        options["speakers"] = True
        options["num_speakers"] = run.num_speakers
    return json.dumps(options, sort_keys=True, separators=(",", ":"))


def transcription_options(options: str) -> TranscriptionOptions:
    """What `file_options` wrote, as the engine takes it."""
    fields = json.loads(options)
    decode = DecodeOptions(
        task=Task(fields["task"]),
        language=fields["language"],
        prompt=fields["prompt"],
        temperature=float(fields["temperature"]),
    )
    return TranscriptionOptions(decode=decode, word_timestamps=bool(fields["word_timestamps"]))


def speaker_options(options: str) -> tuple[bool, int | None]:
    """Whether `file_options` asked for speaker labels, and for how many speakers."""
    fields = json.loads(options)
    count = fields.get("num_speakers")
    return bool(fields.get("speakers")), None if count is None else int(count)


def key_of(row: dict[str, Any]) -> RowKey:
    return (str(row["path"]), row.get("sha256"), str(row["model"]), str(row["options"]))


def now() -> datetime:
    return datetime.now(UTC)


def error_text(code: str, message: str) -> str:
    return f"{code}: {message}"


def failed_row(
    *,
    path: str,
    id: str,
    model: str,
    options: str,
    error: str,
    sha256: str | None = None,
    duration_s: float | None = None,
) -> dict[str, Any]:
    return {
        "path": path,
        "id": id,
        "sha256": sha256,
        "duration_s": duration_s,
        "language": None,
        "text": None,
        "segments": None,
        "speaker_turns": None,
        "model": model,
        "options": options,
        "error": error,
        "processed_at": now(),
    }


def transcript_row(
    *, path: str, id: str, sha256: str, model: str, options: str, transcript: Transcript
) -> dict[str, Any]:
    segments = [
        {
            "id": s.id,
            "start": s.start,
            "end": s.end,
            "text": s.text,
            "avg_logprob": s.avg_logprob,
            "compression_ratio": s.compression_ratio,
            "no_speech_prob": s.no_speech_prob,
            "temperature": s.temperature,
            "speaker": None,
            "words": [
                {
                    "start": w.start,
                    "end": w.end,
                    "word": w.word,
                    "probability": w.probability,
                    "speaker": None,
                }
                for w in s.words
            ],
        }
        for s in transcript.segments
    ]
    return {
        "path": path,
        "id": id,
        "sha256": sha256,
        "duration_s": round(transcript.duration_s, 3),
        "language": transcript.language,
        "text": transcript.text,
        "segments": segments,
        "speaker_turns": None,
        "model": model,
        "options": options,
        "error": None,
        "processed_at": now(),
    }


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def to_json_line(row: dict[str, Any]) -> str:
    at = row.get("processed_at")
    fields = {**row, "processed_at": at.isoformat() if isinstance(at, datetime) else at}
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
