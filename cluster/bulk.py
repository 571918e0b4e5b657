"""Bulk audio: a directory, glob, manifest or bucket of files in, one row per file out.

    ray job submit --working-dir . -- python -m cluster.bulk --input DIR --output DIR
    python -m cluster.bulk --input DIR --output DIR      # joins RAY_ADDRESS or starts a local Ray

The driver lists the inputs, skips those an earlier run into the same output already has a
row for (path, sha256, model, options), runs the rest through the Ray Data pipeline
(`cluster/bulk_pipeline.py`) and commits the rows in part files as they come. Progress goes
to a `ProgressSink` (the batch's database row with `--batch-id`, else the log) and to the
metrics `rayscribe_bulk_rows_total{status}` and `rayscribe_bulk_audio_seconds_total`.
Exit status: 0 when every input has a row (some rows may hold errors), 1 when the run
could not finish, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from services.bulk.inputs import InputError
from services.bulk.objects import resolve
from services.bulk.output import OutputDir, PartWriter
from services.bulk.progress import BulkCounts, NullProgress, ProgressSink
from services.bulk.rows import RunOptions
from services.bulk.run import Collector, plan
from services.bulk.speakers import MAX_SPEAKERS, diarization_missing
from services.core.logging import configure_logging, get_logger
from services.core.settings import Settings
from services.transcription.domain import Task
from services.transcription.languages import LANGUAGE_NAMES
from services.transcription.model_files import served_model_id

log = get_logger("cluster.bulk")

LOCAL_START_ATTEMPTS = 3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cluster.bulk",
        description="Transcribe many audio files on Ray Data: one output row per input file "
        "(path, id, sha256, duration_s, language, text, segments with words, model, options, "
        "error, processed_at); with --speakers, segments and words also carry `speaker`. "
        "Broken files get a row with their error. A rerun into the same output skips the "
        "files it already has a row for.",
    )
    p.add_argument(
        "--input",
        required=True,
        help="a directory, a glob (quoted), an s3://bucket/prefix, or a manifest "
        "(.jsonl, .csv or .parquet with a `path` column and optional `language`, `prompt`, `id`)",
    )
    p.add_argument(
        "--output", required=True, help="a directory or s3://bucket/prefix for the part files"
    )
    p.add_argument("--format", choices=("parquet", "jsonl"), default="parquet", help="row format")
    p.add_argument(
        "--model",
        default=None,
        help="tiny.en, base or a CTranslate2 model directory (default: RAYSCRIBE_WHISPER__MODEL)",
    )
    p.add_argument(
        "--language", default=None, help="ISO-639-1 code of the audio (default: detected)"
    )
    p.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    p.add_argument(
        "--subtitles",
        choices=("srt", "vtt"),
        default=None,
        help="also write <output>/_subtitles/<id>.srt|vtt per file",
    )
    p.add_argument(
        "--speakers",
        action="store_true",
        help="label speakers (experimental; needs the extra rayscribe[diarization]): each "
        "segment is split where the speaker changes and it and its words get `speaker` "
        "(A, B, ... by first appearance in the file)",
    )
    p.add_argument(
        "--num-speakers",
        type=int,
        default=None,
        metavar="N",
        help=f"with --speakers: the number of speakers in every file, 1 to {MAX_SPEAKERS} "
        "(default: found per file)",
    )
    p.add_argument("--min-workers", type=int, default=1, help="engine actors to keep (default 1)")
    p.add_argument(
        "--max-workers", type=int, default=None, help="engine actors at most (default: min)"
    )
    p.add_argument(
        "--num-gpus", type=float, default=None, help="GPUs per engine actor (default: CPU only)"
    )
    p.add_argument(
        "--force", action="store_true", help="remove the earlier rows and transcribe everything"
    )
    p.add_argument("--batch-id", default=None, help="report progress to this batch's database row")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.min_workers < 1:
        p.error("--min-workers must be at least 1")
    args.max_workers = args.max_workers or args.min_workers
    if args.max_workers < args.min_workers:
        p.error("--max-workers must be at least --min-workers")
    if args.num_gpus is not None and args.num_gpus <= 0:
        p.error("--num-gpus must be positive")
    if args.num_speakers is not None:
        if not args.speakers:
            p.error("--num-speakers needs --speakers")
        if not 1 <= args.num_speakers <= MAX_SPEAKERS:
            p.error(f"--num-speakers must be 1 to {MAX_SPEAKERS}, got {args.num_speakers}")
    if args.speakers and (missing := diarization_missing()) is not None:
        p.error(f"--speakers: {missing}")
    if args.language is not None:
        args.language = args.language.strip().lower()
        if args.language not in LANGUAGE_NAMES:
            p.error(f"--language {args.language!r} is not an ISO-639-1 code such as 'en'")
    return args


def progress_sink(settings: Settings, batch_id: str | None) -> ProgressSink:
    if batch_id is None:
        return NullProgress()
    from services.bulk.batch_progress import DatabaseProgress

    sink: ProgressSink = DatabaseProgress(settings, batch_id)
    return sink


class _Last:
    """Passes progress on and remembers the last counts (for `finished` after a failure)."""

    def __init__(self, sink: ProgressSink, counts: BulkCounts) -> None:
        self._sink = sink
        self.counts = counts

    def started(self, counts: BulkCounts) -> None:
        self.counts = counts
        self._sink.started(counts)

    def advanced(self, counts: BulkCounts) -> None:
        self.counts = counts
        self._sink.advanced(counts)

    def finished(self, counts: BulkCounts, error: str | None) -> None:
        self._sink.finished(counts, error)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    if args.model:
        settings = settings.model_copy(
            update={"whisper": settings.whisper.model_copy(update={"model": args.model})}
        )
    configure_logging(settings.logging.level)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)  # `ray job stop`: finish the sink
    sink = _Last(progress_sink(settings, args.batch_id), BulkCounts(total=0))
    run = RunOptions(
        model=served_model_id(settings),
        task=Task(args.task),
        language=args.language,
        speakers=args.speakers,
        num_speakers=args.num_speakers,
    )
    ran = False  # whether rows may have been counted, so there are metrics to flush
    try:
        output = OutputDir(resolve(args.output, settings.storage), format=args.format)
        work = plan(args.input, output, run, settings.storage, force=args.force)
        sink.started(work.counts)
        log.info("bulk_started", input=args.input, output=output.location.url, **_dict(work.counts))
        counts = work.counts
        if work.todo:
            ran = True
            counts = _run_pipeline(args, settings, work.todo, output, work.counts, sink)
    except (InputError, ValueError) as exc:
        log.error("bulk_failed", error=str(exc))
        sink.finished(sink.counts, str(exc))
        print(f"bulk: {exc}", file=sys.stderr)
        if ran:
            _flush_metrics(settings)
        return 1
    except BaseException as exc:
        log.exception("bulk_failed")
        sink.finished(sink.counts, f"{type(exc).__name__}: {exc}")
        if isinstance(exc, SystemExit | KeyboardInterrupt):
            return 1  # `ray job stop` kills soon after its signal: no time to flush metrics
        if ran:
            _flush_metrics(settings)  # the rows counted before the crash still reach Prometheus
        raise
    sink.finished(counts, None)
    log.info("bulk_finished", output=output.location.url, **_dict(counts))
    if ran:
        _flush_metrics(settings)
    return 0


def _dict(counts: BulkCounts) -> dict[str, Any]:
    return {
        "total": counts.total,
        "done": counts.done,
        "failed": counts.failed,
        "audio_seconds": round(counts.audio_seconds, 1),
    }


def _run_pipeline(
    args: argparse.Namespace,
    settings: Settings,
    todo: list[dict[str, Any]],
    output: OutputDir,
    counts: BulkCounts,
    sink: ProgressSink,
) -> BulkCounts:
    import pyarrow as pa
    import ray
    from ray.util.metrics import Counter

    from cluster.bulk_pipeline import build, plan_budget

    _connect(ray)
    context = ray.get_runtime_context()
    # Ops find the run in the dashboard by its job id; its metrics carry the worker id.
    log.info("bulk_driver", ray_job_id=context.get_job_id(), worker_id=context.get_worker_id())
    rows_total = Counter(
        "rayscribe_bulk_rows", description="Bulk rows written, by status.", tag_keys=("status",)
    )
    audio_total = Counter(
        "rayscribe_bulk_audio_seconds", description="Seconds of audio in bulk rows written."
    )

    def observe(row: dict[str, Any]) -> None:
        rows_total.inc(1, tags={"status": "failed" if row["error"] else "done"})
        if row["duration_s"]:
            audio_total.inc(float(row["duration_s"]))

    budget = plan_budget(
        settings,
        min_workers=args.min_workers,
        max_workers=args.max_workers,
        num_gpus=args.num_gpus,
        available_cpus=float(ray.available_resources().get("CPU", 0.0)),  # type: ignore[no-untyped-call]
        speakers=args.speakers,
    )
    log.info("bulk_budget", **budget.__dict__)
    writer = PartWriter(
        output, max_rows=settings.bulk.part_max_rows, max_age_s=settings.bulk.part_max_age_s
    )
    collector = Collector(output, writer, counts, sink, subtitles=args.subtitles, observe=observe)
    dataset = build(todo, settings, budget, args.subtitles, speakers=args.speakers)
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            assert isinstance(batch, pa.Table)
            collector.add(batch.to_pylist())
        collector.close()
    finally:
        log.info("bulk_rows_processed", rows=collector.processed)
    return collector.committed


def _flush_metrics(settings: Settings) -> None:
    """After a run that reached the pipeline, finished or failed, stay up until Ray's
    metrics agent has the last counts (`bulk.metrics_flush_s`): Ray reports a process's
    metrics every 10 s and loses what was not sent when it exits. Not after `ray job stop`,
    which kills the driver seconds after its signal. Only on a cluster joined through
    RAY_ADDRESS: a local Ray ends with this process, and its metrics with it."""
    if os.environ.get("RAY_ADDRESS") and settings.bulk.metrics_flush_s > 0:
        log.info("bulk_metrics_flush", wait_s=settings.bulk.metrics_flush_s)
        time.sleep(settings.bulk.metrics_flush_s)


def _connect(ray: Any) -> None:
    """Join the cluster in RAY_ADDRESS (a Ray job has it), else start a local Ray."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # A local Ray waits a fixed 30 s for its raylet, which a busy machine can miss: retry.
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        try:
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False)
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == LOCAL_START_ATTEMPTS:
                raise
            log.warning("bulk_local_ray_start_retried", attempt=attempt, error=str(exc))
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
