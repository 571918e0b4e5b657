"""Closed-loop HTTP load and a replica-count recorder for the cluster tests.

`Load` runs `clients` threads, each sending one transcription after another until told
to stop (or to drop to fewer clients), and keeps every outcome: when it started, how long
it took, the HTTP status (0 for a transport error or timeout) and the `Retry-After`
header. `ReplicaTimeline` polls Serve's status for the running replicas of a deployment
and keeps the changes.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass(frozen=True)
class Outcome:
    started: float  # monotonic
    elapsed_s: float
    status: int  # 0: no HTTP answer (connection error or client timeout)
    retry_after: str | None
    detail: str


@dataclass
class Load:
    url: str
    clip: Path
    clients: int
    timeout_s: float = 120.0
    outcomes: list[Outcome] = field(default_factory=list)
    _active: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        self._active = self.clients
        body = self.clip.read_bytes()
        for index in range(self.clients):
            thread = threading.Thread(target=self._client, args=(index, body), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def scale_to(self, clients: int) -> None:
        """Clients with an index at or past `clients` finish their request and stop."""
        self._active = clients

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 30)
        return self.outcomes

    def _client(self, index: int, body: bytes) -> None:
        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as client:
            while not self._stop.is_set() and index < self._active:
                started = time.monotonic()
                try:
                    response = client.post(
                        "/v1/audio/transcriptions",
                        files={"file": (self.clip.name, body)},
                        data={"model": "whisper-1"},
                    )
                    outcome = Outcome(
                        started,
                        time.monotonic() - started,
                        response.status_code,
                        response.headers.get("retry-after"),
                        response.text[:200] if response.status_code != 200 else "",
                    )
                except httpx.HTTPError as exc:
                    outcome = Outcome(started, time.monotonic() - started, 0, None, repr(exc))
                with self._lock:
                    self.outcomes.append(outcome)
                if outcome.status != 200:
                    time.sleep(0.5)  # a refused caller backs off a little, as clients do


def statuses(outcomes: list[Outcome]) -> dict[int, int]:
    return dict(sorted(Counter(o.status for o in outcomes).items()))


def running_replicas(app_name: str, deployment: str) -> int:
    from ray import serve

    app = serve.status().applications.get(app_name)
    info = app.deployments.get(deployment) if app else None
    if info is None:
        return 0
    return sum(
        count
        for state, count in info.replica_states.items()
        if getattr(state, "value", state) == "RUNNING"
    )


@dataclass
class ReplicaTimeline:
    """(seconds since start, running replicas) at every change, polled every `period_s`."""

    app_name: str
    deployment: str
    period_s: float = 0.5
    changes: list[tuple[float, int]] = field(default_factory=list)
    _t0: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ReplicaTimeline:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    @property
    def current(self) -> int:
        return self.changes[-1][1] if self.changes else 0

    def at(self, moment: float) -> float:
        return moment - self._t0

    def wait_for(self, predicate: object, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if callable(predicate) and predicate(self.current):
                return True
            time.sleep(self.period_s)
        return False

    def describe(self) -> str:
        return ", ".join(f"{t:.0f}s:{n}" for t, n in self.changes)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                count = running_replicas(self.app_name, self.deployment)
            except Exception:  # the controller busy or restarting: try again
                count = self.current
            if not self.changes or self.changes[-1][1] != count:
                self.changes.append((time.monotonic() - self._t0, count))
            self._stop.wait(self.period_s)
