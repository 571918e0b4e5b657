"""What the service measures, behind a seam: the services record, the edge decides where to.

`telemetry` is the process's one recorder. Services call its typed methods
(`telemetry.request(...)`, `telemetry.job_retry(...)`); they never see Ray. Each Ray process
(a Serve replica, the bulk driver) installs the Ray backend once
(`cluster.metrics.install`), which turns these calls into `ray.serve.metrics` /
`ray.util.metrics` instruments exported through Ray's metrics agent. Elsewhere (unit tests,
scripts) the default backend records nothing, or a test installs `MemoryBackend` to read
what was recorded.

Every metric is declared once in `CATALOG` (name, kind, labels, meaning): the README table,
the Grafana dashboard test and the Prometheus test all read it. Label values are small
closed sets (routes, models, status codes, error codes, states): never job ids or users.
Ray's exporter prefixes every name with `ray_` (`ray_rayscribe_requests_total`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Kind = Literal["counter", "gauge", "histogram"]
Tags = Mapping[str, str]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    description: str
    labels: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()


_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

REQUESTS = MetricSpec(
    "rayscribe_requests_total",
    "counter",
    "HTTP requests answered by the ingress, by route template, model and status code.",
    ("route", "model", "status"),
)
AUDIO_SECONDS = MetricSpec(
    "rayscribe_audio_seconds_total",
    "counter",
    "Seconds of audio transcribed by the Whisper replicas (sync requests and job chunks).",
    ("model", "task"),
)
REAL_TIME_FACTOR = MetricSpec(
    "rayscribe_real_time_factor",
    "histogram",
    "Per request at the Whisper replica: wall seconds from arrival to transcript per "
    "second of audio (below 1 is faster than real time).",
    ("model",),
    (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
BATCH_WINDOWS = MetricSpec(
    "rayscribe_batch_windows",
    "histogram",
    "30 s windows in each engine batch.",
    ("model",),
    (1, 2, 3, 4, 6, 8, 12, 16, 32),
)
WINDOWS_DECODED = MetricSpec(
    "rayscribe_windows_decoded_total",
    "counter",
    "30 s windows run through the model (retries of cut-short items included).",
    ("model",),
)
WINDOW_FILL = MetricSpec(
    "rayscribe_window_fill_seconds",
    "histogram",
    "Seconds of speech per 30 s window, one observation per engine batch (its mean).",
    ("model",),
    (2, 5, 10, 15, 20, 25, 28, 30),
)
QUEUE_WAIT = MetricSpec(
    "rayscribe_queue_wait_seconds",
    "histogram",
    "Per work item: seconds from joining the replica's batch queue to its engine batch starting.",
    ("model",),
    _SECONDS,
)
BATCH_INFERENCE = MetricSpec(
    "rayscribe_batch_inference_seconds",
    "histogram",
    "Seconds one engine batch ran on the model (encode, decode, word timestamps).",
    ("model",),
    _SECONDS,
)
DECODE_FAILURES = MetricSpec(
    "rayscribe_decode_failures_total",
    "counter",
    "Audio the decoder refused, by error code and path: upload (the ingress answered 4xx) "
    "or job (the tracker failed the job).",
    ("code", "path"),
)
LIMIT_REJECTIONS = MetricSpec(
    "rayscribe_limit_rejections_total",
    "counter",
    "Requests refused with 429 by a per-user limit: rate_limit_exceeded or quota_exceeded.",
    ("code",),
)
RESULT_CACHE = MetricSpec(
    "rayscribe_result_cache_lookups_total",
    "counter",
    "Result-cache lookups (sync requests and jobs), by result: hit or miss.",
    ("result",),
)
JOB_ATTEMPTS = MetricSpec(
    "rayscribe_job_attempts_total",
    "counter",
    "Job attempts started (claims by a tracker).",
)
JOB_RETRIES = MetricSpec(
    "rayscribe_job_retries_total",
    "counter",
    "Jobs sent back to the queue: reason error (uses an attempt) or interruption (does not).",
    ("reason",),
)
JOBS = MetricSpec(
    "rayscribe_jobs",
    "gauge",
    "Jobs in the database by state; exported by one tracker (the others export 0): use sum.",
    ("state",),
)
OLDEST_QUEUED = MetricSpec(
    "rayscribe_oldest_queued_job_age_seconds",
    "gauge",
    "Age of the oldest queued job (0 when none); one tracker exports it (others 0): use max.",
)
BATCHES = MetricSpec(
    "rayscribe_batches",
    "gauge",
    "Bulk batches in the database by state; exported like rayscribe_jobs (use sum).",
    ("state",),
)
HEARTBEAT_AGE = MetricSpec(
    "rayscribe_tracker_heartbeat_age_seconds",
    "gauge",
    "Per tracker replica: seconds since its last heartbeat reached the database.",
)
DISK_FREE = MetricSpec(
    "rayscribe_disk_free_bytes",
    "gauge",
    "Free bytes on the disk of the upload spool or the local audio store, per replica.",
    ("volume",),
)
DISK_RESERVE = MetricSpec(
    "rayscribe_disk_reserve_bytes",
    "gauge",
    "The free-space reserve uploads must leave on that disk (below it: 507).",
    ("volume",),
)

CATALOG: tuple[MetricSpec, ...] = (
    REQUESTS,
    AUDIO_SECONDS,
    REAL_TIME_FACTOR,
    BATCH_WINDOWS,
    WINDOWS_DECODED,
    WINDOW_FILL,
    QUEUE_WAIT,
    BATCH_INFERENCE,
    DECODE_FAILURES,
    LIMIT_REJECTIONS,
    RESULT_CACHE,
    JOB_ATTEMPTS,
    JOB_RETRIES,
    JOBS,
    OLDEST_QUEUED,
    BATCHES,
    HEARTBEAT_AGE,
    DISK_FREE,
    DISK_RESERVE,
)

DECODE_CODES = frozenset(
    {
        "empty_file",
        "invalid_audio",
        "truncated_audio",
        "no_audio_samples",
        "unsupported_media",
        "audio_too_long",
    }
)
"""Error codes that mean the decoder refused the audio."""

LIMIT_CODES = ("rate_limit_exceeded", "quota_exceeded")

STARTING_AT_ZERO: dict[str, list[tuple[MetricSpec, dict[str, str]]]] = {
    "ingress": [
        *((LIMIT_REJECTIONS, {"code": code}) for code in LIMIT_CODES),
        *((RESULT_CACHE, {"result": result}) for result in ("hit", "miss")),
        *((DECODE_FAILURES, {"code": code, "path": "upload"}) for code in sorted(DECODE_CODES)),
    ],
    "tracker": [
        (JOB_ATTEMPTS, {}),
        *((JOB_RETRIES, {"reason": reason}) for reason in ("error", "interruption")),
        *((DECODE_FAILURES, {"code": code, "path": "job"}) for code in sorted(DECODE_CODES)),
    ],
}
"""Counter series each kind of process knows it will have: exported at 0 from the start,
so `rate()` and the alerts see them before the first event."""


class Instrument(Protocol):
    """One metric of a backend: `record` adds to a counter (0 only makes the series
    exist), sets a gauge, observes into a histogram (by the spec's kind)."""

    def record(self, value: float, tags: Tags) -> None: ...


class MetricsBackend(Protocol):
    def instrument(self, spec: MetricSpec) -> Instrument: ...


class _Nothing:
    def record(self, value: float, tags: Tags) -> None:
        return None


class NullBackend:
    """Records nothing: the default outside Ray."""

    def instrument(self, spec: MetricSpec) -> Instrument:
        return _Nothing()


@dataclass
class _Remembered:
    spec: MetricSpec
    values: dict[tuple[tuple[str, str], ...], list[float]] = field(default_factory=dict)

    def record(self, value: float, tags: Tags) -> None:
        self.values.setdefault(tuple(sorted(tags.items())), []).append(value)


class MemoryBackend:
    """Keeps every recorded value (tests of the code that records)."""

    def __init__(self) -> None:
        self.metrics: dict[str, _Remembered] = {}

    def instrument(self, spec: MetricSpec) -> Instrument:
        return self.metrics.setdefault(spec.name, _Remembered(spec))

    def values(self, name: str, **tags: str) -> list[float]:
        """Everything recorded on `name` with at least these tags."""
        metric = self.metrics.get(name)
        if metric is None:
            return []
        wanted = set(tags.items())
        return [v for key, vs in metric.values.items() if wanted <= set(key) for v in vs]

    def total(self, name: str, **tags: str) -> float:
        return sum(self.values(name, **tags))


class Telemetry:
    """The typed recording calls; instruments are made on first use, per backend."""

    def __init__(self, backend: MetricsBackend | None = None) -> None:
        self._backend: MetricsBackend = backend or NullBackend()
        self._instruments: dict[str, Instrument] = {}
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        # Serve pickles deployment classes with the globals they use: a replica must get
        # its own process's recorder, never a copy of the deploying process's.
        return (_process_telemetry, ())

    def use(self, backend: MetricsBackend) -> None:
        with self._lock:
            self._backend = backend
            self._instruments = {}

    def _record(self, spec: MetricSpec, value: float, **tags: str) -> None:
        instrument = self._instruments.get(spec.name)
        if instrument is None:
            with self._lock:
                instrument = self._instruments.get(spec.name)
                if instrument is None:
                    instrument = self._instruments[spec.name] = self._backend.instrument(spec)
        instrument.record(value, tags)

    def start_at_zero(self, role: str) -> None:
        """Export the counters `role` (`ingress`, `tracker`) will have, at 0."""
        for spec, tags in STARTING_AT_ZERO.get(role, []):
            self._record(spec, 0, **tags)

    # -- the ingress --------------------------------------------------------------------
    def request(self, route: str, model: str, status: int) -> None:
        self._record(REQUESTS, 1, route=route, model=model, status=str(status))

    def error_answered(self, code: str | None) -> None:
        """An error the ingress answered: counts decoder refusals and limit rejections."""
        if code in DECODE_CODES:
            self._record(DECODE_FAILURES, 1, code=code, path="upload")
        elif code in LIMIT_CODES:
            self._record(LIMIT_REJECTIONS, 1, code=code)

    def result_cache(self, hit: bool) -> None:
        self._record(RESULT_CACHE, 1, result="hit" if hit else "miss")

    # -- the Whisper replica ------------------------------------------------------------
    def transcribed(self, model: str, task: str, audio_s: float, wall_s: float) -> None:
        self._record(AUDIO_SECONDS, audio_s, model=model, task=task)
        if audio_s > 0:
            self._record(REAL_TIME_FACTOR, wall_s / audio_s, model=model)

    def batch(
        self,
        model: str,
        *,
        windows: int,
        fill_s: float,
        inference_s: float,
        queued_s: Sequence[float],
    ) -> None:
        self._record(BATCH_WINDOWS, windows, model=model)
        self._record(WINDOWS_DECODED, windows, model=model)
        self._record(WINDOW_FILL, fill_s, model=model)
        self._record(BATCH_INFERENCE, inference_s, model=model)
        for wait_s in queued_s:
            self._record(QUEUE_WAIT, wait_s, model=model)

    # -- the job tracker ----------------------------------------------------------------
    def job_attempts(self, count: int) -> None:
        if count:
            self._record(JOB_ATTEMPTS, count)

    def job_interrupted(self) -> None:
        self._record(JOB_RETRIES, 1, reason="interruption")

    def job_failure(self, code: str, *, final: bool) -> None:
        """An attempt failed: retried later (not `final`), or the job failed for good."""
        if not final:
            self._record(JOB_RETRIES, 1, reason="error")
        elif code in DECODE_CODES:
            self._record(DECODE_FAILURES, 1, code=code, path="job")

    def jobs_by_state(self, counts: Mapping[str, int], oldest_queued_s: float) -> None:
        for state, count in counts.items():
            self._record(JOBS, count, state=state)
        self._record(OLDEST_QUEUED, oldest_queued_s)

    def batches_by_state(self, counts: Mapping[str, int]) -> None:
        for state, count in counts.items():
            self._record(BATCHES, count, state=state)

    def heartbeat_age(self, age_s: float) -> None:
        self._record(HEARTBEAT_AGE, age_s)

    # -- any replica --------------------------------------------------------------------
    def disk(self, volume: str, free_bytes: int, reserve_bytes: int) -> None:
        self._record(DISK_FREE, free_bytes, volume=volume)
        self._record(DISK_RESERVE, reserve_bytes, volume=volume)


telemetry = Telemetry()
"""The process's recorder; `cluster.metrics.install()` points it at Ray."""


def _process_telemetry() -> Telemetry:
    return telemetry
