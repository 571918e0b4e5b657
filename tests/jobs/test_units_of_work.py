"""The jobs package's transaction rule (written at the top of `services/jobs/service.py`):
repositories never commit, and each step is one unit of work that announces what it
committed, not what a later read happens to see."""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

import services.jobs
from tests.jobs.conftest import JobsEnv
from tests.long_audio import build

Factory = Callable[..., Any]
REPOSITORIES = ("repository.py", "leases.py")
TRANSACTION_CALLS = {"commit", "rollback", "begin", "begin_nested", "transaction", "close"}
WRITES = ("INSERT", "UPDATE", "DELETE")


def test_repositories_never_commit_begin_or_open_sessions() -> None:
    package = Path(services.jobs.__file__).parent
    for name in REPOSITORIES:
        tree = ast.parse((package / name).read_text())
        calls = {
            node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
        }
        assert not calls & TRANSACTION_CALLS, (name, calls & TRANSACTION_CALLS)
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "services.core.db"
            for alias in node.names
        }
        assert "transaction" not in imported, name


@dataclass
class Transaction:
    statements: list[str] = field(default_factory=list)

    @property
    def writes(self) -> bool:
        return any(s.lstrip().upper().startswith(WRITES) for s in self.statements)

    @property
    def loads_a_job(self) -> bool:
        """A whole job row is read (what a view is built from to be announced)."""
        return any(
            s.lstrip().upper().startswith("SELECT") and "jobs.owner" in s for s in self.statements
        )


class Transactions:
    """Every transaction one engine runs, with its statements (SQLAlchemy's engine events)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.done: list[Transaction] = []
        self._open: dict[int, Transaction] = {}
        self._engine = engine.sync_engine
        self._hooks = {
            "begin": self._begin,
            "before_cursor_execute": self._execute,
            "commit": self._end,
            "rollback": self._end,
        }
        for name, hook in self._hooks.items():
            event.listen(self._engine, name, hook)

    def close(self) -> None:
        for name, hook in self._hooks.items():
            event.remove(self._engine, name, hook)

    def _begin(self, connection: Any) -> None:
        self._open[id(connection)] = Transaction()

    def _execute(self, connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if id(connection) in self._open:
            self._open[id(connection)].statements.append(statement)

    def _end(self, connection: Any) -> None:
        if (done := self._open.pop(id(connection), None)) is not None:
            self.done.append(done)


@pytest.mark.parametrize("backend", ["postgres"])  # the rule is the same on SQLite
async def test_each_step_of_a_job_announces_what_its_own_transaction_committed(
    env_factory: Factory, tmp_path: Path
) -> None:
    """The runner used to read every job it changed back in a transaction of its own (one
    per chunk) before announcing it; each step now reads its view before it commits."""
    env: JobsEnv = await env_factory(start=False, chunk_s=30, cut_search_s=5)
    path = build(50, [30.0]).write_flac(tmp_path / "two-chunks.flac")
    job_id = (await env.submit(path)).json()["id"]
    seen = Transactions(env.runner_runtime.engine)
    try:
        await env.start_runner()
        done = await env.wait(job_id, timeout_s=300)
    finally:
        seen.close()
    assert done["status"] == "succeeded"
    assert done["progress"]["done"] >= 2
    loads = [t for t in seen.done if t.loads_a_job]
    read_only = [t.statements for t in loads if not t.writes]
    assert read_only == [], "a job was read back in a transaction of its own to announce it"
    # Claimed, one step per chunk (and the start), succeeded: each announced from its step.
    assert len(loads) >= done["progress"]["done"] + 2
    # And what was announced last is the row as it stands (the status cache holds it).
    fresh = await env.app_runtime.jobs.get_fresh(job_id)
    assert await env.app_runtime.jobs.job_events.cached(job_id) == fresh
