"""PostgreSQL and Redis for tests.

The machine's shared servers (127.0.0.1:5432 and :6379) are used for ordinary tests, each
session in a database of its own. Tests that take a server down start a private instance
(temp dir, free port) and stop that one, by its own PID: the shared servers are never
stopped. A missing shared server makes the tests fail, never skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import redis

SHARED_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
# Parallel test runs on one machine may pick other Redis databases.
SHARED_REDIS = f"redis://127.0.0.1:6379/{os.environ.get('RAYSCRIBE_TEST_REDIS_DB', '5')}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def create_database() -> tuple[str, str]:
    """A fresh database on the shared server: (asyncpg DSN, SQLAlchemy URL)."""
    name = f"rayscribe_test_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(SHARED_POSTGRES, timeout=5)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return name, f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


async def drop_database(name: str) -> None:
    connection = await asyncpg.connect(SHARED_POSTGRES, timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def shared_redis_url() -> str:
    client = redis.Redis.from_url(SHARED_REDIS, socket_timeout=2)
    client.ping()  # fails loudly when the shared Redis is down
    client.flushdb()  # database 5 belongs to these tests
    client.close()
    return SHARED_REDIS


def _pg_bin(tool: str) -> str:
    versions = sorted(Path("/usr/lib/postgresql").iterdir(), key=lambda p: p.name)
    return str(versions[-1] / "bin" / tool)


class PrivatePostgres:
    """A throwaway PostgreSQL cluster owned by the `postgres` user, on a free port.

    It lives in a temp dir of its own (pytest's are private to root, and PostgreSQL
    refuses to run as root); `remove()` deletes it.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rayscribe-pg-"))
        self.dir = self.root / "pgdata"
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self._as_postgres(_pg_bin("initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _as_postgres(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            _pg_bin("pg_ctl"), "-D", str(self.dir), "-o", options,
            "-l", str(self.dir / "server.log"), "-w", "start",
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return int((self.dir / "postmaster.pid").read_text().splitlines()[0])

    def stop(self) -> None:
        """Fast shutdown of this instance only, by the PID in its own data dir."""
        pid = self.pid
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        raise TimeoutError("private PostgreSQL did not stop")


class PrivateRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError("private Redis did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None
