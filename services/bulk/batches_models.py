"""Batches: what a client sends (`BatchRequest`) and what the API returns (`BatchView`)."""

from __future__ import annotations

import shlex
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.bulk.batches_tables import Batch, BatchState
from services.diarization.clustering import MAX_SPEAKERS
from services.transcription.languages import LANGUAGE_NAMES

MAX_PATH_CHARS = 4096
Location = Field(min_length=1, max_length=MAX_PATH_CHARS)


class BatchOptions(BaseModel):
    """The flags of `python -m cluster.bulk` a client may set."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["parquet", "jsonl"] = "parquet"
    model: str | None = Field(default=None, min_length=1, max_length=255, pattern=r"^[\w.\-]+$")
    language: str | None = None
    task: Literal["transcribe", "translate"] = "transcribe"
    subtitles: Literal["srt", "vtt"] | None = None
    min_workers: int = Field(default=1, ge=1, le=1024)
    max_workers: int = Field(default=1, ge=1, le=1024)
    num_gpus: float | None = Field(default=None, gt=0, le=8)
    force: bool = False
    speakers: bool = Field(
        default=False,
        description="Label speakers (`--speakers`, experimental): `speaker` on segments and "
        "words, `speaker_turns` per row. Needs the diarization extra.",
    )
    num_speakers: int | None = Field(
        default=None,
        description=f"With `speakers`: the number of speakers in every file, 1 to {MAX_SPEAKERS} "
        "(default: found per file).",
    )

    @model_validator(mode="after")
    def _check(self) -> BatchOptions:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"min_workers ({self.min_workers}) must not exceed max_workers ({self.max_workers})"
            )
        if self.language is not None and self.language not in LANGUAGE_NAMES:
            raise ValueError(f"language {self.language!r} is not a Whisper language code")
        if self.num_speakers is not None:
            if not self.speakers:
                raise ValueError("num_speakers applies only with speakers: true")
            if not 1 <= self.num_speakers <= MAX_SPEAKERS:
                raise ValueError(
                    f"num_speakers must be between 1 and {MAX_SPEAKERS}, got {self.num_speakers}"
                )
        return self

    def flags(self) -> list[str]:
        """The options as `cluster.bulk` flags."""
        out = ["--format", self.format, "--task", self.task]
        out += ["--min-workers", str(self.min_workers), "--max-workers", str(self.max_workers)]
        for flag, value in (
            ("--model", self.model),
            ("--language", self.language),
            ("--subtitles", self.subtitles),
            ("--num-gpus", None if self.num_gpus is None else f"{self.num_gpus:g}"),
            ("--num-speakers", None if self.num_speakers is None else str(self.num_speakers)),
        ):
            if value is not None:
                out += [flag, value]
        if self.force:
            out.append("--force")
        if self.speakers:
            out.append("--speakers")
        return out


class BatchRequest(BaseModel):
    """`POST /v1/batches`: where the audio is, where the rows go, how to transcribe."""

    model_config = ConfigDict(extra="forbid")

    input: str = Location
    """A directory, a glob, a manifest (.jsonl, .csv, .parquet) or an s3:// prefix."""
    output: str = Location
    """A directory or an s3:// prefix."""
    options: BatchOptions = BatchOptions()


def entrypoint(python: str, request: BatchRequest, batch_id: str) -> str:
    """The Ray job's command line; every value is quoted for the shell Ray runs it in."""
    argv = [python, "-m", "cluster.bulk", "--input", request.input, "--output", request.output]
    argv += [*request.options.flags(), "--batch-id", batch_id]
    return shlex.join(argv)


class BatchCounts(BaseModel):
    total: int | None
    done: int
    failed: int
    audio_seconds: float


class BatchView(BaseModel):
    """What `GET /v1/batches/{id}` returns."""

    id: str
    object: str = "batch"
    state: BatchState
    owner: str | None
    input: str
    output: str
    options: BatchOptions
    ray_job_id: str
    """The Ray job's id: find the run (and its progress bars) in the Ray dashboard."""
    counts: BatchCounts
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, batch: Batch) -> BatchView:
        return cls(
            id=batch.id,
            state=BatchState(batch.state),
            owner=batch.owner,
            input=batch.input,
            output=batch.output,
            options=BatchOptions.model_validate(batch.options),
            ray_job_id=batch.ray_job_id,
            counts=BatchCounts(
                total=batch.total,
                done=batch.done or 0,
                failed=batch.failed or 0,
                audio_seconds=round(batch.audio_seconds or 0.0, 3),
            ),
            error=batch.error,
            created_at=batch.created_at,
            started_at=batch.started_at,
            finished_at=batch.finished_at,
        )


class BatchPage(BaseModel):
    object: str = "list"
    data: list[BatchView]
    next_cursor: str | None
