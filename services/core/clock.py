"""Time in one convention: naive UTC datetimes, as stored in both PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
