"""Jobs: the tables. PostgreSQL is the source of truth; `views.py` holds what the API returns."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from services.core.db import Base


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_claim", "status", "model", "next_attempt_at", "created_at"),
        Index("ix_jobs_owner_created", "owner", "created_at"),
        Index("ix_jobs_expires", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    task: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(255))
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    audio_key: Mapped[str | None] = mapped_column(String(255))
    audio_sha256: Mapped[str] = mapped_column(String(64))
    audio_bytes: Mapped[int] = mapped_column(Integer)
    audio_duration_s: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    lease_epoch: Mapped[int | None] = mapped_column(Integer)
    """The `TrackerIncarnation.token` holding the job: unique across all trackers."""
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    """The tracker name holding the lease: it takes over its own earlier incarnations at once."""
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    result_deleted: Mapped[bool] = mapped_column(default=False)
    interruptions: Mapped[int] = mapped_column(Integer, default=0)
    """Overload and replica restarts met while running: they never use up `attempts`."""
    version: Mapped[int] = mapped_column(Integer, default=0)
    """Bumped by every change of the row; caches never replace a newer version by an older."""
    error_code: Mapped[str | None] = mapped_column(String(64))
    """A stable code for `error` (the safe message); details go to the logs only."""
    chunk_s: Mapped[float | None] = mapped_column(Float)
    """The nominal chunk length the job started with; a resumed job keeps its own."""
    cut_points: Mapped[list[float] | None] = mapped_column(JSON)
    """Chunk boundaries in seconds, recorded as they are decided; a retry reuses them."""


class JobResult(Base):
    """One row per job, ever: written in the same transaction that marks it succeeded."""

    __tablename__ = "job_results"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    transcript: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class JobChunk(Base):
    """A finished chunk of a long job, so a retry resumes instead of starting over."""

    __tablename__ = "job_chunks"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    transcript: Mapped[dict[str, Any]] = mapped_column(JSON)


class JobSpeakers(Base):
    """The speaker turns of a `diarized_json` job, found once over the whole file and kept,
    so every chunk and every retry of the job labels words with the same speakers."""

    __tablename__ = "job_speakers"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    turns: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    """`start`, `end` (seconds) and `speaker` of each turn, in time order."""
    created_at: Mapped[datetime] = mapped_column(DateTime)


class JobSpeakerReference(Base):
    """A known speaker of a `diarized_json` job: the name and the decoded reference clip
    (16 kHz 16-bit PCM, at most 336 kB), kept from submission until the job's speaker
    turns are stored (then they are never needed again), out of the job row so that
    progress writes never carry them."""

    __tablename__ = "job_speaker_references"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    """The reference's index in `known_speaker_references[]`."""
    name: Mapped[str] = mapped_column(String(64))
    pcm: Mapped[bytes] = mapped_column(LargeBinary)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_created", "created_at"),)

    scope: Mapped[str] = mapped_column(String(255), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(36))
    request_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class TrackerIncarnation(Base):
    """One (re)start of a tracker. Its autoincrement `token` is the lease token (fencing
    number), unique across every tracker; `heartbeat_at` says which models are served."""

    __tablename__ = "tracker_incarnations"
    __table_args__ = (
        Index("ix_tracker_incarnations_model", "model", "heartbeat_at"),
        {"sqlite_autoincrement": True},
    )

    token: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime)
