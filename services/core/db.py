"""The SQLAlchemy async engine: PostgreSQL (asyncpg) in uat/prod, SQLite (aiosqlite) embedded.

SQLite is shared by several processes (ingress replicas, the job tracker), so it runs in
WAL mode with a busy timeout. A database that cannot be reached is an `UnavailableError`
(503 with Retry-After), never a 500; a pool with no free connection within
`connect_timeout_s` is an `OverloadedError` (503 `overloaded` with Retry-After).

`pool_size` is a hard cap per process (no overflow connections): the number an operator
multiplies by the process count to size PostgreSQL's `max_connections`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from services.core.errors import OverloadedError, UnavailableError
from services.core.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 10_000
POOL_FULL_RETRY_AFTER_S = 2


class Base(DeclarativeBase):
    """Declarative base of every table."""


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.database_url
    if url.startswith("sqlite"):
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        pool_size=settings.database.pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        pool_timeout=settings.database.connect_timeout_s,
        connect_args={"timeout": settings.database.connect_timeout_s},
    )


def _sqlite_pragmas(connection: Any, _: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database could not be reached (as opposed to a bug)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OSError | TimeoutError | ConnectionError)


@asynccontextmanager
async def transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One unit of work: committed on success, rolled back on error; outages become 503."""
    try:
        async with sessions() as session, session.begin():
            yield session
    except Exception as exc:
        if isinstance(exc, PoolTimeoutError):  # every connection busy: load, not an outage
            raise OverloadedError(
                "Every database connection is busy; retry shortly.",
                retry_after_s=POOL_FULL_RETRY_AFTER_S,
            ) from exc
        if is_unavailable(exc):
            raise UnavailableError(
                "The job database is unavailable; retry shortly.", retry_after_s=5
            ) from exc
        raise


async def ping(sessions: async_sessionmaker[AsyncSession]) -> bool:
    from sqlalchemy import text

    async with sessions() as session:
        await session.execute(text("SELECT 1"))
    return True
