"""The CLI's HTTP side: one client for the rayscribe API, errors as `ApiError`.

A 429 or 503 with `Retry-After` (overload, rate limits, a database failing over) is retried
after the time the server asks for, a few times, so a long run of `rayscribe transcribe`
rides out a busy server instead of losing files. The token travels only in the
`Authorization` header and is never printed.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any

import httpx

RETRY_STATUSES = (429, 503)
MAX_RETRIES = 5
MAX_RETRY_WAIT_S = 30.0
DEFAULT_TIMEOUT_S = 600.0


class ApiError(Exception):
    """A refusal by the server (status and OpenAI's error fields) or no server at all."""

    def __init__(self, status: int | None, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        code = f" {self.code}" if self.code else ""
        return f"HTTP {self.status}{code}: {self.message}"


@dataclass(frozen=True)
class Target:
    server: str
    token: str | None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def _error_of(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message, code = str(error.get("message") or response.text), error.get("code")
    except ValueError:
        message, code = response.text.strip() or response.reason_phrase, None
    return ApiError(response.status_code, message[:2000], code)


def _retry_after_s(response: httpx.Response, attempt: int) -> float | None:
    if response.status_code not in RETRY_STATUSES or attempt >= MAX_RETRIES:
        return None
    header = response.headers.get("Retry-After")
    if header is None:
        return None
    try:
        return min(max(float(header), 0.1), MAX_RETRY_WAIT_S)
    except ValueError:
        return None


def _wait_before_retry(response: httpx.Response, attempt: int) -> float | None:
    """None when `response` is the answer (a success); else the seconds to wait before
    attempt `attempt + 1`. Raises the server's error when no retry is due."""
    if response.is_success:
        return None
    wait = _retry_after_s(response, attempt)
    if wait is None:
        raise _error_of(response)
    return wait


def _unreachable(target: Target, exc: Exception) -> ApiError:
    return ApiError(None, f"cannot reach {target.server}: {exc.__class__.__name__}: {exc}")


class Api:
    """Synchronous calls (status, list, submit...)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._client = httpx.Client(
            base_url=target.server, headers=target.headers, timeout=target.timeout_s
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self._client.close()

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in itertools.count():
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise _unreachable(self.target, exc) from exc
            wait = _wait_before_retry(response, attempt)
            if wait is None:
                return response
            time.sleep(wait)
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.call(method, path, **kwargs).json()


class AsyncApi:
    """Concurrent uploads (`rayscribe transcribe`)."""

    def __init__(self, target: Target, connections: int) -> None:
        self.target = target
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = httpx.AsyncClient(
            base_url=target.server, headers=target.headers, timeout=target.timeout_s, limits=limits
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post_file(
        self, path: str, file_name: str, data: bytes, fields: dict[str, str]
    ) -> httpx.Response:
        for attempt in itertools.count():
            try:
                response = await self._client.post(
                    path, files={"file": (file_name, data)}, data=fields
                )
            except httpx.HTTPError as exc:
                raise _unreachable(self.target, exc) from exc
            wait = _wait_before_retry(response, attempt)
            if wait is None:
                return response
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")
