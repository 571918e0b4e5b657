"""Keyset paging shared by the jobs and batches lists: newest first, one opaque cursor.

A cursor is the (created_at, id) of the last row a page returned, base64 encoded. The
service checks `limit` and `cursor` with `check_page` before it opens a transaction (so a
bad one answers 400, not a database error); the repository runs `newest_first`.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from services.core.errors import InvalidRequestError

MAX_PAGE = 100
"""The most rows one page holds."""


class KeyedRow(Protocol):
    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> str: ...


RowT = TypeVar("RowT", bound=KeyedRow)


def check_page(limit: int, cursor: str | None) -> None:
    """Refuse (400) a limit outside 1..MAX_PAGE or a cursor this API did not hand out."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequestError(f"limit must be 1 to {MAX_PAGE}, got {limit}.", param="limit")
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except ValueError as exc:
            raise InvalidRequestError(
                "cursor is not one this API returned; pass the next_cursor of a page.",
                param="cursor",
                code="invalid_value",
            ) from exc


async def newest_first(
    session: AsyncSession,
    query: Select[RowT],
    created_at: InstrumentedAttribute[datetime],
    row_id: InstrumentedAttribute[str],
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[RowT], str | None]:
    """One page of `query`'s rows ordered by (created_at, id) descending, and the cursor of
    the next page (None on the last one). `cursor` must have passed `check_page`."""
    if cursor is not None:
        after_at, after_id = decode_cursor(cursor)
        query = query.where(
            or_(created_at < after_at, and_(created_at == after_at, row_id < after_id))
        )
    rows = list(
        await session.scalars(query.order_by(created_at.desc(), row_id.desc()).limit(limit + 1))
    )
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def encode_cursor(row: KeyedRow) -> str:
    raw = f"{_naive_utc(row.created_at).isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError for anything that is not a cursor this API handed out.

    Rows hold naive UTC; a cursor whose timestamp carries an offset (made elsewhere, or by
    a client) is converted to that, so it compares correctly on PostgreSQL and SQLite.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, row_id = base64.urlsafe_b64decode(padded.encode()).decode().split("|", 1)
        moment = _naive_utc(datetime.fromisoformat(created_at))
    except (ValueError, UnicodeError, OverflowError, TypeError) as exc:
        raise ValueError(f"not a cursor: {cursor[:40]!r}") from exc
    if not row_id or len(row_id) > 36:
        raise ValueError(f"not a cursor: {cursor[:40]!r}")
    return moment, row_id


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)
