"""One typed configuration for every process: the ingress, the Whisper replicas, the tools.

Every field reads from the environment with the prefix ``RAYSCRIBE_``; nested sections use
``__`` (``RAYSCRIBE_WHISPER__MODEL=base``). A ``.env`` file in the working directory is read too.
Values are validated when a process starts, so a bad deployment fails before it serves.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.core.auth_settings import AuthMode, AuthSettings
from services.core.bulk_settings import BulkSettings as BulkSettings  # (re-exported)
from services.core.storage_settings import StorageSettings as StorageSettings

MIB = 1024 * 1024
PUBLIC_BIND_ADDRESSES = frozenset({"0.0.0.0", "::", "[::]"})


class Environment(StrEnum):
    DEV = "dev"
    UAT = "uat"
    PROD = "prod"


class ServerSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    host: str = "127.0.0.1"
    """Address Serve's HTTP proxy binds; when set, it replaces serve_config.yaml's http_options.host (deployments/serve_launch.py applies it and refuses a public bind without authentication outside dev)."""

    max_upload_bytes: int = Field(default=25 * MIB, gt=0)
    """Largest upload the synchronous endpoints accept, in bytes (OpenAI's limit is 25 MB)."""

    sync_max_duration_s: float = Field(default=600.0, gt=0)
    """Longest audio the synchronous endpoints transcribe, in seconds of decoded audio."""

    min_upload_rate_bytes_s: int = Field(default=16 * 1024, ge=0)
    """A request body arriving slower than this (averaged over `slow_body_window_s`) is cut off with 408; 0 disables."""

    slow_body_window_s: float = Field(default=30.0, gt=0)
    """The window over which the upload rate floor is judged."""

    sse_keepalive_s: float = Field(default=15.0, gt=0)
    """Seconds between keep-alive comments on an idle event stream."""

    sse_max_lifetime_s: float = Field(default=3600.0, gt=0)
    """An event stream ends after this long; the client reconnects with Last-Event-ID."""

    sse_max_streams: int = Field(default=256, ge=1)
    """Open event streams per ingress replica; past it, 429 with Retry-After."""

    sse_max_streams_per_job: int = Field(default=8, ge=1)
    """Open event streams on one job; past it, 429 with Retry-After."""

    sse_max_streams_per_client: int | None = Field(default=None, ge=1)
    """Open event streams per client address; applies only when `trusted_client_header` is set."""

    trusted_client_header: str | None = None
    """Header a trusted proxy puts the client address in (e.g. X-Forwarded-For); unset means no per-address caps."""

    cors_origins: list[str] = []
    """Browser origins allowed to call the API (CORS), e.g. ["https://app.example.com"]; none by default. `*` allows any origin, never with credentials."""


class WhisperSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    model: str = "tiny.en"
    """`tiny.en` (bundled), `base` (multilingual, bundled in two parts) or a CTranslate2 model directory."""

    models: list[str] = []
    """Every model to serve, one Whisper deployment each (e.g. ["tiny.en", "base"]); empty serves `model` alone. `model` is the default for `whisper-1`."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs; `auto` picks CUDA when CTranslate2 sees a GPU, else the CPU."""

    compute_type: str = "auto"
    """CTranslate2 compute type; `auto` means float16 on GPU and int8 on CPU."""

    cpu_threads: int = Field(default=2, ge=1)
    """CTranslate2 threads per model worker on CPU; keep cpu_threads x num_workers within the cores the replica may use."""

    num_workers: int = Field(default=1, ge=1)
    """Model workers per replica that may run batches in parallel (they share the weights)."""

    beam_size: int = Field(default=1, ge=1, le=10)
    """Beam width for decoding; 1 is greedy, the fastest choice on CPU."""

    decode_batch_size: int = Field(default=8, ge=1)
    """How many 30 s windows go through the model in one CTranslate2 call."""

    hung_call_s: float = Field(default=300.0, gt=0)
    """An engine call running longer than this makes the replica's health check fail (a hung model), so Serve replaces it."""

    pack_across_requests: bool = True
    """Let speech from different requests share a 30 s window; off gives output that never depends on other traffic."""

    cache_dir: Path | None = None
    """Where a model shipped in parts is joined once; defaults to `<data_dir>/models`."""


class DatabaseSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    url: SecretStr | None = None
    """SQLAlchemy async URL, e.g. postgresql+asyncpg://user:password@host/db (a secret: never logged); unset means SQLite at <data_dir>/rayscribe.db."""

    pool_size: int = Field(default=5, ge=1)
    """Connections per process in the pool (PostgreSQL)."""

    connect_timeout_s: float = Field(default=3.0, gt=0)
    """How long to wait for a connection before the request fails with 503."""


class RedisSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    url: SecretStr | None = None
    """redis://[:password@]host:port/db (a secret: never logged); unset runs without Redis (in-process cache, events by polling)."""

    timeout_s: float = Field(default=0.5, gt=0)
    """Socket timeout of every Redis call; a slow Redis is treated as a down one."""

    breaker_failures: int = Field(default=3, ge=1)
    """Consecutive failures that open the circuit breaker (Redis is then skipped)."""

    breaker_reset_s: float = Field(default=10.0, gt=0)
    """How long the breaker stays open before Redis is tried again."""


class CacheSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled: bool = True
    """Reuse the transcript of identical audio with identical options (benchmarks turn it off)."""

    result_ttl_s: int = Field(default=24 * 3600, ge=1)
    """How long a cached transcript is reused."""

    status_ttl_s: int = Field(default=60, ge=1)
    """How long a job's status stays in the read-through cache."""

    memory_max_bytes: int = Field(default=64 * MIB, ge=0)
    """Byte cap of the in-process cache (the embedded default, and the result cache while Redis is down); least recently used entries go first."""


class JobsSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    max_upload_bytes: int = Field(default=1024 * MIB, gt=0)
    """Largest upload /v1/jobs accepts, in bytes (streamed to storage, never held in memory)."""

    max_duration_s: float = Field(default=4 * 3600.0, gt=0)
    """Longest audio a job transcribes, in seconds of decoded audio."""

    retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    """How long stored audio and results are kept after a job is created."""

    max_attempts: int = Field(default=3, ge=1)
    """Tries per job before a transient failure becomes final."""

    retry_backoff_s: float = Field(default=2.0, ge=0)
    """Delay before the first retry; it doubles with every further attempt."""

    lease_s: float = Field(default=60.0, gt=0)
    """How long a running job's lease lasts without a heartbeat before it is requeued."""

    poll_interval_s: float = Field(default=2.0, gt=0)
    """How often the job tracker looks for work when nobody nudges it."""

    max_concurrent: int = Field(default=2, ge=1)
    """Jobs the tracker runs at once per served model (each sends one chunk at a time, below sync traffic)."""

    chunk_s: float = Field(default=300.0, ge=30)
    """Nominal seconds of audio the tracker sends to the model per step; each cut is moved to a pause before it."""

    cut_search_s: float = Field(default=30.0, ge=1)
    """How far before a chunk's nominal end the tracker looks for the longest pause to cut at."""

    min_pause_s: float = Field(default=0.3, ge=0)
    """Shortest silence a chunk may be cut at; with none in the search window, chunks overlap."""

    overlap_s: float = Field(default=5.0, ge=0)
    """Overlap between chunks cut through speech; words in it are kept once, by word timestamps."""

    disk_reserve_bytes: int = Field(default=2 * 1024 * MIB, ge=0)
    """Free disk kept in reserve under the audio store; an upload that would eat into it gets 507."""

    disk_reserve_fraction: float = Field(default=0.05, ge=0, le=1)
    """The reserve as a fraction of the disk; the smaller of the two reserves applies."""

    orphan_audio_age_s: float = Field(default=3600.0, gt=0)
    """Stored audio with no job row older than this is deleted by the sweeper."""

    tombstone_retention_s: float = Field(default=90 * 24 * 3600.0, gt=0)
    """How long a job row stays after its data was deleted (it answers 410, not 404), counted from retention's end."""

    sweep_interval_s: float = Field(default=60.0, gt=0)
    """How often the tracker sweeps expired data, orphaned audio and old tombstones."""

    model_grace_s: float = Field(default=600.0, gt=0)
    """A job whose model no running tracker serves fails with `model_not_served` after waiting this long."""

    interruption_backoff_max_s: float = Field(default=30.0, gt=0)
    """Longest wait between retries after overload or a replica restart (these do not use up attempts)."""

    idempotency_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    """How long an Idempotency-Key keeps returning the same job."""


class LimitsSettings(BaseModel):
    """Per-user limits (the caller's `Principal.limit_key`); every limit unset is unlimited."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=1)
    """Requests one user may make per `requests_period_s` (a burst of that many, then evenly spaced); unset: unlimited."""

    requests_period_s: float = Field(default=60.0, gt=0)
    """The period of `requests_per_minute`, in seconds (60; tests use seconds)."""

    audio_seconds_per_hour: float | None = Field(default=None, gt=0)
    """Seconds of audio one user may have transcribed per `audio_period_s` (sync and jobs together); unset: unlimited."""

    audio_period_s: float = Field(default=3600.0, gt=0)
    """The period of `audio_seconds_per_hour`, in seconds (3600; tests use seconds)."""

    max_concurrent_jobs: int | None = Field(default=None, ge=1)
    """Queued plus running jobs one user may have at once (counted in the database); unset: unlimited."""

    max_stored_bytes: int | None = Field(default=None, ge=1)
    """Bytes of job audio one user may have stored at once (counted in the database); unset: unlimited."""

    fallback_warning_s: float = Field(default=60.0, gt=0)
    """While Redis is down, limits are counted per process; this is how often that is logged again."""


class DiarizationSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled: bool = False
    """Speaker labels (`response_format=diarized_json`, synchronous transcriptions and jobs): builds the `SpeakerDiarizer` deployment. Needs the extra `rayscribe[diarization]`."""


class LoggingSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level written to the JSON log lines."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAYSCRIBE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        use_attribute_docstrings=True,
    )

    env: Environment = Environment.DEV
    """Deployment environment: `dev`, `uat` or `prod`; outside dev, unsafe values are refused."""

    data_dir: Path = Path(".rayscribe")
    """Directory for local state (joined models, later the database and stored audio)."""

    server: ServerSettings = ServerSettings()
    """HTTP-facing limits."""

    whisper: WhisperSettings = WhisperSettings()
    """The speech model and how it runs."""

    database: DatabaseSettings = DatabaseSettings()
    """Where jobs live (the source of truth)."""

    redis: RedisSettings = RedisSettings()
    """Optional cache, status and events; everything works without it."""

    cache: CacheSettings = CacheSettings()
    """Result and status caching."""

    jobs: JobsSettings = JobsSettings()
    """Asynchronous jobs and the job tracker."""

    logging: LoggingSettings = LoggingSettings()
    """Structured logging."""

    auth: AuthSettings = AuthSettings()
    """Who may call: bearer tokens (JWT) from an OpenID Connect provider, and their roles."""

    limits: LimitsSettings = LimitsSettings()
    """Per-user rate limits and quotas."""

    storage: StorageSettings = StorageSettings()
    """Where job audio and bulk files live (local disk or S3)."""

    bulk: BulkSettings = BulkSettings()
    """Bulk audio: batches submitted as Ray jobs."""

    diarization: DiarizationSettings = DiarizationSettings()
    """Speaker labels (experimental, optional extra)."""

    @model_validator(mode="after")
    def _refuse_unsafe_values_outside_dev(self) -> Settings:
        if self.env is Environment.DEV:
            return self
        problems: list[str] = []
        # A public bind is judged where the bind is decided (deployments/serve_launch.py),
        # against the authentication mode: see services/limits/bind.py.
        if not self.data_dir.is_absolute():
            problems.append(f"data_dir must be an absolute path, got {str(self.data_dir)!r}")
        cache_dir = self.whisper.cache_dir
        if cache_dir is not None and not cache_dir.is_absolute():
            problems.append(f"whisper.cache_dir must be an absolute path, got {str(cache_dir)!r}")
        if self.database.url is None:
            problems.append("database.url must be set (PostgreSQL) outside dev")
        if problems:
            raise ValueError(f"unsafe settings for env={self.env.value}: " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _anchor_data_dir(self) -> Settings:
        # Ray workers do not share the launching shell's working directory.
        self.data_dir = self.data_dir.expanduser().resolve()
        return self

    @model_validator(mode="after")
    def _resolve_auth(self) -> Settings:
        dev = self.env is Environment.DEV
        # A copy: the section's default instance is shared by every Settings.
        self.auth = self.auth.model_copy(
            update={
                "mode": self.auth.mode or (AuthMode.OFF if dev else AuthMode.JWT),
                "open_docs": dev if self.auth.open_docs is None else self.auth.open_docs,
            }
        )
        problems = self.auth.problems(self.env.value)
        if problems:
            raise ValueError("invalid auth settings: " + "; ".join(problems))
        return self

    @property
    def model_cache_dir(self) -> Path:
        return self.whisper.cache_dir or self.data_dir / "models"

    @property
    def database_url(self) -> str:
        if self.database.url is not None:
            return self.database.url.get_secret_value()
        return f"sqlite+aiosqlite:///{self.data_dir / 'rayscribe.db'}"

    @property
    def audio_dir(self) -> Path:
        return self.data_dir / "audio"
