"""A real S3-protocol server on loopback for tests: moto's standalone server.

The service code sees only an endpoint URL and the standard AWS_* variables (as with any
S3-compatible store); only this file knows the server is moto. `S3Server.env()` gives the
variables a subprocess (a bulk run, a Ray cluster) needs to reach it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.fs as pafs
import pytest

from services.core.settings import StorageSettings
from tests.servers import free_port

ACCESS_KEY = "rayscribe-test-key"
SECRET_KEY = "rayscribe-test-secret"  # moto accepts any pair; never a real credential
REGION = "us-east-1"


class S3Server:
    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._log = (log_dir / "moto.log").open("wb")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._process.returncode}")
            try:
                if httpx.get(self.endpoint_url, timeout=2).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"moto server did not answer on {self.endpoint_url}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()

    def env(self) -> dict[str, str]:
        """What a process needs to use this server through the service's settings."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "RAYSCRIBE_STORAGE__S3_ENDPOINT_URL": self.endpoint_url,
            "RAYSCRIBE_STORAGE__S3_REGION": REGION,
        }

    def settings(self) -> StorageSettings:
        return StorageSettings(s3_endpoint_url=self.endpoint_url, s3_region=REGION)

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region=REGION,
            scheme="http",
            endpoint_override=f"127.0.0.1:{self.port}",
        )

    def new_bucket(self, prefix: str = "bucket") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.filesystem().create_dir(name)
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("moto"))
    server.start()
    saved = {key: os.environ.get(key) for key in server.env()}
    os.environ.update(server.env())  # pyarrow in this process reads AWS_* too
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
