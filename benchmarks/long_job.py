"""One 20-minute job end to end against the library's in-process batched pipeline.

    .venv/bin/python benchmarks/long_job.py          # or: make bench-long

The recording is the one the jobs tests use (`tests/long_audio.py`): read sentences with
pauses, one centred on each 300 s mark, no pause within 80 s of the 600 s mark. Both sides
use the same model, thread count and decoding options, and both compute word timestamps
(a job always keeps them):

  (b) in-process `BatchedInferencePipeline.transcribe` on the file, decoding included;
  (j) the Serve app: POST /v1/jobs, wait on its event stream, GET the result (submission
      to result).

The machine is noisy, so the two run interleaved `--rounds` times and the best of each is
kept. Prints audio-seconds per wall-second, the ratio j/b (target >= 0.85) and each side's
WER; writes benchmarks/results/long_job.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.core.settings import Settings  # noqa: E402
from services.migrations import upgrade  # noqa: E402
from services.transcription.audio import decode_audio  # noqa: E402
from services.transcription.model_files import resolve_model_dir  # noqa: E402
from tests import serve_local as local  # noqa: E402
from tests.conftest import word_error_rate  # noqa: E402
from tests.long_audio import build  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DURATION_S = 1200.0


def in_process(settings: Settings, path: Path) -> tuple[float, str, int]:
    """(wall seconds, text, 30 s windows the pipeline decoded)."""
    import faster_whisper.transcribe as library
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    windows = 0
    collect = library.collect_chunks

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal windows
        chunks = collect(*args, **kwargs)
        windows += len(chunks[0])
        return chunks

    model = WhisperModel(
        str(resolve_model_dir(settings.whisper.model, settings.model_cache_dir)),
        device="cpu",
        compute_type="int8",
        cpu_threads=settings.whisper.cpu_threads,
    )
    pipeline = BatchedInferencePipeline(model)
    started = time.perf_counter()
    audio = decode_audio(path, max_duration_s=DURATION_S + 1)
    library.collect_chunks = counting
    try:
        segments, _ = pipeline.transcribe(
            audio,
            language="en",
            beam_size=settings.whisper.beam_size,
            temperature=0.0,
            word_timestamps=True,
            batch_size=settings.whisper.decode_batch_size,
        )
        text = "".join(s.text for s in segments)
    finally:
        library.collect_chunks = collect
    return time.perf_counter() - started, text, windows


def job(url: str, path: Path) -> tuple[float, str, dict[str, Any]]:
    with httpx.Client(base_url=url, timeout=120) as client:
        started = time.perf_counter()
        with path.open("rb") as f:
            submitted = client.post(
                "/v1/jobs", files={"file": (path.name, f)}, data={"model": "whisper-1"}
            )
        if submitted.status_code != 202:
            raise RuntimeError(f"the job was refused: {submitted.status_code} {submitted.text}")
        job_id = submitted.json()["id"]
        # Waited on as a client should: the job's event stream (Server-Sent Events) until
        # `end`. Polling its status 4 times a second instead cost the proxy and the ingress
        # about 9 CPU-seconds per job here, a tenth of the run, taken from the model.
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as events:
            for line in events.iter_lines():
                if line == "event: end":
                    break
        body = client.get(f"/v1/jobs/{job_id}").json()
        result = client.get(f"/v1/jobs/{job_id}/result")
        wall = time.perf_counter() - started
    if body["status"] != "succeeded":
        raise RuntimeError(f"the job did not succeed: {body}")
    return wall, result.json()["text"], body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp())
    # A fresh embedded database (SQLite), migrated before Serve starts, as `make run` does.
    (workdir / "data").mkdir()
    settings = Settings(_env_file=None, data_dir=workdir / "data")
    upgrade(settings.database_url)
    recording = build(DURATION_S, [300.0, 600.0, 900.0], no_pause_s=[0, 80, 0])
    path = recording.write_flac(workdir / "twenty_minutes.flac")
    overrides = {"data_dir": str(settings.data_dir), "cache": {"enabled": False}}
    config = local.load_config(port=local.free_port(), settings=overrides)
    url = local.deploy(config)
    from ray import serve

    replica = serve.get_deployment_handle("WhisperTranscriber", app_name=local.APP_NAME)

    def replica_stats() -> dict[str, int]:
        stats: dict[str, Any] = replica.stats.remote().result(timeout_s=30)
        keys = ("windows", "retried", "retry_windows", "fallbacks")
        return {key: int(stats[key]) for key in keys}

    inproc: list[tuple[float, str, int]] = []
    jobs: list[tuple[float, str, dict[str, Any]]] = []
    job_work: list[dict[str, int]] = []  # the Whisper replica's counters, per job
    load: list[float] = []  # the machine is shared: the 1-minute load average, per round
    try:
        for index in range(args.rounds):
            load.append(os.getloadavg()[0])
            inproc.append(in_process(settings, path))
            print(f"round {index + 1} in-process: {inproc[-1][0]:.1f} s")
            before = replica_stats()
            jobs.append(job(url, path))
            after = replica_stats()
            job_work.append({key: after[key] - before[key] for key in after})
            print(f"round {index + 1} job:        {jobs[-1][0]:.1f} s")
    finally:
        local.shutdown()

    b_wall, b_text, b_windows = min(inproc)
    j_wall, j_text, j_body = min(jobs, key=lambda r: r[0])
    result = {
        "audio_s": DURATION_S,
        "model": settings.whisper.model,
        "cpu_threads": settings.whisper.cpu_threads,
        "rounds": args.rounds,
        "in_process_s": b_wall,
        "job_s": j_wall,
        "in_process_audio_s_per_s": DURATION_S / b_wall,
        "job_audio_s_per_s": DURATION_S / j_wall,
        "ratio_job_over_in_process": b_wall / j_wall,
        "target_met": b_wall / j_wall >= 0.85,
        "wer_in_process": word_error_rate(recording.text, b_text),
        "wer_job": word_error_rate(recording.text, j_text),
        "job_chunks": j_body["progress"],
        # 30 s windows: the pipeline's; the job's as packed, plus items decoded again
        # (cut short by the model) and repetition fallbacks, per round.
        "in_process_windows": b_windows,
        "job_windows_per_round": job_work,
        "all_rounds_s": {"in_process": [r[0] for r in inproc], "job": [r[0] for r in jobs]},
        "ratio_per_round": [b[0] / j[0] for b, j in zip(inproc, jobs, strict=True)],
        "load_average_1m_at_round_start": load,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "long_job.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
