"""Batches: the table. A batch is one bulk run submitted over HTTP as a Ray job.

The Ray job's status is the authority for `state` (the service refreshes it when a batch is
read); the counts are written by the job's driver as it goes (`batch_progress.py`).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from services.core.db import Base


class BatchState(StrEnum):
    QUEUED = "queued"
    """Submitted; the Ray job is pending (waiting for the cluster)."""
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    """Stopped by `DELETE /v1/batches/{id}` (or by hand in Ray)."""


BATCH_ACTIVE = (BatchState.QUEUED, BatchState.RUNNING)
BATCH_FINISHED = (BatchState.SUCCEEDED, BatchState.FAILED, BatchState.STOPPED)


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_owner_created", "owner", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    input: Mapped[str] = mapped_column(Text)
    output: Mapped[str] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    ray_job_id: Mapped[str] = mapped_column(String(64))
    """The Ray job's submission id (find it in the Ray dashboard)."""
    total: Mapped[int | None] = mapped_column(Integer)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    audio_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    charged_audio_s: Mapped[float] = mapped_column(Float, default=0.0)
    """Audio-seconds already charged to the owner's quota (compare-and-set, never twice)."""
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
