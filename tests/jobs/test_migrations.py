"""Migrations: up to head on an empty database, down to base, up again; head = the models."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from services.core.db import Base
from services.migrations import downgrade, upgrade
from tests.servers import create_database, drop_database

TABLES = {
    "jobs",
    "job_results",
    "job_chunks",
    "job_speakers",
    "job_speaker_references",
    "idempotency_keys",
    "tracker_incarnations",
}


async def _tables_and_drift(url: str) -> tuple[set[str], list[object]]:
    engine = create_async_engine(url)
    async with engine.connect() as connection:

        def inspect_all(sync_connection: object) -> tuple[set[str], list[object]]:
            names = set(inspect(sync_connection).get_table_names())
            context = MigrationContext.configure(sync_connection)  # type: ignore[arg-type]
            return names, compare_metadata(context, Base.metadata)

        result = await connection.run_sync(inspect_all)
    await engine.dispose()
    return result


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_upgrade_downgrade_upgrade(backend: str, tmp_path: Path) -> None:
    if backend == "postgres":
        name, url = await create_database()
    else:
        name, url = "", f"sqlite+aiosqlite:///{tmp_path / 'migrations.db'}"
    try:
        await asyncio.to_thread(upgrade, url)
        tables, drift = await _tables_and_drift(url)
        assert tables >= TABLES
        assert drift == [], f"the migrations and the models disagree: {drift}"
        await asyncio.to_thread(downgrade, url)
        tables, _ = await _tables_and_drift(url)
        assert not TABLES & tables
        await asyncio.to_thread(upgrade, url)
        tables, drift = await _tables_and_drift(url)
        assert tables >= TABLES
        assert drift == []
    finally:
        if name:
            await drop_database(name)
