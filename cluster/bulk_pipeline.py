"""The Ray Data pipeline of a bulk run: inputs -> prepare (CPU) -> engine (actor pool).

Two stages, both autoscaling actor pools (an actor keeps its VAD or Whisper model loaded):

- `PrepareStage` (CPU): reads each file, hashes it, decodes it with the bounded decoder,
  runs VAD and cuts the speech into the engine's work items (`services.bulk.prepare`).
  Only the speech leaves it, as 16-bit items: never the decoded float32 audio. With
  `--speakers` it also diarizes the decoded file (the Diarizer loaded once per actor, one
  torch thread) and its turns travel with the row.
- `EngineStage` (`--num-gpus` per actor when given): the online path's `WhisperEngine`
  packs the items of up to `files_per_call` files into shared windows and decodes them
  (`services.bulk.transcribe`).

The driver iterates the result and writes it (`cluster/bulk.py`).

CPU budget: Ray Data waits, without an error, for the CPUs its actors ask for; with the
default (1 CPU per actor) a pipeline on a 2-core machine, or on a cluster where a Serve
app already holds the logical CPUs, stalled for minutes. So each stage asks for a
fraction (`bulk.prepare_num_cpus`, `bulk.engine_num_cpus`), lowered at start to what the
cluster has free for the pools' minimum sizes. The logical CPUs only place actors: the
engine's real threads are `whisper.cpu_threads` (OMP_NUM_THREADS is set to match). A
diarizing preparer asks for at least `SPEAKERS_PREPARE_NUM_CPUS` (it keeps a core busier),
lowered the same way, so `--speakers` cannot stall a 2-core machine either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy, Dataset

from services.bulk.prepare import Preparer
from services.bulk.rows import SCHEMA, TURN
from services.bulk.speakers import load_labeller
from services.bulk.transcribe import BulkEngine
from services.core.logging import configure_logging, get_logger
from services.core.settings import Settings
from services.transcription.engine import WhisperEngine
from services.transcription.model_files import served_model_id
from services.transcription.whisper_adapter import warm_up_vad

log = get_logger(__name__)

SPEAKERS_PREPARE_NUM_CPUS = 0.5
"""What a preparer that also diarizes asks for, at least (before fitting to free CPUs)."""
ROWS_PER_BLOCK = 4
"""Input rows per block: small, so the stages overlap from the first files on."""

PREPARED_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("id", pa.string()),
        ("options", pa.string()),
        ("language", pa.string()),
        ("prompt", pa.string()),
        ("sha256", pa.string()),
        ("duration_s", pa.float64()),
        ("error", pa.string()),
        ("items", pa.binary()),
        ("speech_samples", pa.int64()),
        ("turns", pa.list_(TURN)),
        ("diarization_error", pa.string()),
    ]
)
OUTPUT_SCHEMA = SCHEMA.append(pa.field("subtitles", pa.string()))


class PrepareStage:
    def __init__(self, settings: Settings, speakers: bool = False) -> None:
        configure_logging(settings.logging.level)
        warm_up_vad()
        labeller = load_labeller() if speakers else None
        self._preparer = Preparer(settings.bulk, settings.storage, labeller)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self._preparer.prepare(row) for row in batch.to_pylist()]
        return pa.Table.from_pylist(rows, schema=PREPARED_SCHEMA)


class EngineStage:
    def __init__(self, settings: Settings, subtitles: str | None) -> None:
        configure_logging(settings.logging.level)
        engine = WhisperEngine.from_settings(settings)
        engine.warm_up()
        self._engine = BulkEngine(engine, model=served_model_id(settings), subtitles=subtitles)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = self._engine.transcribe(batch.to_pylist())
        return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)


@dataclass(frozen=True)
class Budget:
    """Pool sizes and what each actor asks Ray for."""

    prepare_workers: tuple[int, int]
    engine_workers: tuple[int, int]
    prepare_num_cpus: float
    engine_num_cpus: float
    num_gpus: float | None


def plan_budget(
    settings: Settings,
    *,
    min_workers: int,
    max_workers: int,
    num_gpus: float | None,
    available_cpus: float,
    speakers: bool = False,
) -> Budget:
    """Fit the pools' minimum sizes into the CPUs free now, so the run never waits on CPUs.

    The decode/VAD pool grows with the engine pool: on GPUs one preparer per engine is
    about right for short files; on CPUs both share the same cores anyway."""
    prepare_workers = (1, max(1, max_workers))
    engine_workers = (min_workers, max_workers)
    prepare_cpus = settings.bulk.prepare_num_cpus
    if speakers:
        prepare_cpus = max(prepare_cpus, SPEAKERS_PREPARE_NUM_CPUS)
    engine_cpus = settings.bulk.engine_num_cpus
    needed = prepare_workers[0] * prepare_cpus + engine_workers[0] * engine_cpus
    if needed > available_cpus:
        # Ray accepts fractions to 1/10000; round down so the sum still fits.
        scale = max(0.0, available_cpus) / needed
        prepare_cpus = math.floor(prepare_cpus * scale * 1000) / 1000
        engine_cpus = math.floor(engine_cpus * scale * 1000) / 1000
    return Budget(prepare_workers, engine_workers, prepare_cpus, engine_cpus, num_gpus)


def build(
    todo: list[dict[str, Any]],
    settings: Settings,
    budget: Budget,
    subtitles: str | None,
    speakers: bool = False,
) -> Dataset:
    blocks = max(1, math.ceil(len(todo) / ROWS_PER_BLOCK))
    threads = str(settings.whisper.cpu_threads)
    engine_args: dict[str, Any] = {"runtime_env": {"env_vars": {"OMP_NUM_THREADS": threads}}}
    if budget.num_gpus:
        engine_args["num_gpus"] = budget.num_gpus
    dataset = ray.data.from_items(todo, override_num_blocks=blocks)
    prepared = dataset.map_batches(
        PrepareStage,
        batch_size=None,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(
            min_size=budget.prepare_workers[0], max_size=budget.prepare_workers[1]
        ),
        num_cpus=budget.prepare_num_cpus,
        fn_constructor_kwargs={"settings": settings, "speakers": speakers},
    )
    return prepared.map_batches(
        EngineStage,
        batch_size=settings.bulk.files_per_call,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(
            min_size=budget.engine_workers[0],
            max_size=budget.engine_workers[1],
            max_tasks_in_flight_per_actor=2,
        ),
        num_cpus=budget.engine_num_cpus,
        fn_constructor_kwargs={"settings": settings, "subtitles": subtitles},
        **engine_args,
    )
