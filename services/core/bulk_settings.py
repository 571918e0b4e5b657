# ruff: noqa: E501  (one-line field docstrings feed the README settings table)
"""The `bulk` section of the settings (`RAYSCRIBE_BULK__*`): bulk runs on Ray Data, and the
batches API that submits them as Ray jobs. Its own module to keep `settings.py` small."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

MIB = 1024 * 1024


class BulkSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    allowed_roots: list[str] = []
    """Directories and s3:// prefixes that batches may read from and write to; anything else is refused (403). Empty: no batches over HTTP."""

    ray_address: str | None = None
    """The Ray cluster's dashboard (Jobs API) address, e.g. http://127.0.0.1:8265, where `POST /v1/batches` submits its Ray job; unset: batches answer 503."""

    ray_token: SecretStr | None = None
    """Ray's auth token (`ray get-auth-token`) for that cluster (a secret: never logged, never given to clients); unset when the cluster has no token auth."""

    code_dir: str | None = None
    """Where the rayscribe code lies on the Ray cluster's nodes, put first on the job's PYTHONPATH; unset: what the nodes' Python has installed (the image)."""

    python: str = "python"
    """The Python the Ray job's entrypoint runs (`<python> -m cluster.bulk ...`), as found on the nodes' PATH."""

    progress_interval_s: float = Field(default=2.0, gt=0)
    """Least time between two writes of a running batch's counts to its row (the Ray job's driver writes them)."""

    max_duration_s: float = Field(default=4 * 3600.0, gt=0)
    """Longest audio one input file of a bulk run may hold; a longer file gets a row with `audio_too_long` (decoding stops at the cap)."""

    max_file_bytes: int = Field(default=1024 * MIB, gt=0)
    """Largest input file a bulk run reads; a larger one gets a row with `file_too_large`."""

    files_per_call: int = Field(default=16, ge=1)
    """Input files whose speech the engine packs and decodes together in one call."""

    prepare_num_cpus: float = Field(default=0.25, ge=0)
    """Logical CPUs each decode/VAD worker of a bulk run asks Ray for (lowered to what is free at start, so a run never waits on CPUs a Serve app holds)."""

    engine_num_cpus: float = Field(default=1.0, ge=0)
    """Logical CPUs each engine worker of a bulk run asks Ray for (lowered like `prepare_num_cpus`); its threads are `whisper.cpu_threads`."""

    part_max_rows: int = Field(default=1000, ge=1)
    """A bulk run commits an output part file once it holds this many rows..."""

    part_max_age_s: float = Field(default=30.0, gt=0)
    """...or once its oldest row waited this long: at most this much finished work is redone after a kill."""

    metrics_flush_s: float = Field(default=12.0, ge=0)
    """On a Ray cluster, how long a finished or failed run's driver stays up so that Ray's metrics agent gets its last counts (`rayscribe_bulk_rows_total`): Ray sends a process's metrics every 10 s and drops what a process had not sent when it exits. Rows are all written before; 0 exits at once."""
