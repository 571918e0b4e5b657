"""A bulk run end to end against the library's in-process batched pipeline.

    .venv/bin/python benchmarks/bulk.py          # or: make bench-bulk

The input is at least `--minutes` (30) of fixture speech: `--file-s` (60) second FLAC
files, each the English fixture clips joined with short pauses, starting at a different
clip. Both sides use the same model, thread count and greedy decoding:

  (b) in-process `BatchedInferencePipeline.transcribe` on the same files decoded and joined
      with 1 s gaps (decoding not timed), segment timestamps on;
  (k) `python -m cluster.bulk --input DIR --output DIR` in a fresh process, from its start
      to the last row written: Ray start-up, listing, decoding, VAD, the engine (which
      also computes word timestamps, as every bulk row has them) and writing Parquet.

The machine is noisy, so the two run interleaved `--rounds` times and the best of each is
kept. Prints audio-seconds per wall-second, the ratio k/b (target >= 0.8) and each side's
WER; writes benchmarks/results/bulk.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.core.settings import Settings  # noqa: E402
from services.transcription.audio import decode_audio  # noqa: E402
from services.transcription.domain import SAMPLE_RATE  # noqa: E402
from services.transcription.model_files import resolve_model_dir  # noqa: E402
from tests.audio_variants import fixture_audio, write_flac  # noqa: E402
from tests.conftest import ENGLISH, word_error_rate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PAUSE_S = 0.5


def make_files(directory: Path, minutes: float, file_s: float) -> tuple[list[Path], list[str]]:
    """Files of about `file_s` seconds until `minutes` are reached; their spoken texts."""
    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), dtype=np.float32)
    clips = [(fixture_audio(clip.path), clip.text) for clip in ENGLISH]
    paths, texts, total_s, index = [], [], 0.0, 0
    while total_s < minutes * 60:
        parts, words, length = [], [], 0
        start = index % len(clips)
        while length < file_s * SAMPLE_RATE:
            audio, text = clips[(start + len(words)) % len(clips)]
            parts += [audio, pause]
            words.append(text)
            length += audio.shape[0] + pause.shape[0]
        path = directory / f"speech_{index:04d}.flac"
        write_flac([np.concatenate(parts)], str(path))
        paths.append(path)
        texts.append(" ".join(words))
        total_s += length / SAMPLE_RATE
        index += 1
    return paths, texts


def in_process(settings: Settings, paths: list[Path]) -> tuple[float, str]:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(
        str(resolve_model_dir(settings.whisper.model, settings.model_cache_dir)),
        device="cpu",
        compute_type="int8",
        cpu_threads=settings.whisper.cpu_threads,
    )
    pipeline = BatchedInferencePipeline(model)
    gap = np.zeros(SAMPLE_RATE, dtype=np.float32)
    pieces = []
    for path in paths:
        pieces += [decode_audio(path, max_duration_s=3600), gap]
    audio = np.concatenate(pieces)  # decoding is not timed
    started = time.perf_counter()
    segments, _ = pipeline.transcribe(
        audio,
        language="en",
        beam_size=settings.whisper.beam_size,
        temperature=0.0,
        word_timestamps=False,
        without_timestamps=False,  # the batched pipeline's default is True: no segment times
        batch_size=settings.whisper.decode_batch_size,
    )
    text = "".join(s.text for s in segments)
    return time.perf_counter() - started, text


def bulk(input_dir: Path, workdir: Path) -> tuple[float, float, list[str]]:
    """(seconds to the last row written, seconds to the process's exit, texts in order)."""
    import pyarrow.parquet as pq

    output = workdir / "out"
    shutil.rmtree(output, ignore_errors=True)
    ray_tmp = tempfile.mkdtemp(prefix="rbb-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYSCRIBE_", "RAY_"))}
    env.update(PYTHONPATH=str(ROOT), RAY_TMPDIR=ray_tmp, RAYSCRIBE_DATA_DIR=str(workdir / "data"))
    started_at = time.time()
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cluster.bulk",
                "--input",
                str(input_dir),
                "--output",
                str(output),
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        exited = time.perf_counter() - started
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"the bulk run failed:\n{done.stderr[-4000:]}")
    last_part = max(
        datetime.fromisoformat(json.loads(line[line.index("{") :])["timestamp"]).timestamp()
        for line in done.stderr.splitlines()
        if '"event": "bulk_part_written"' in line
    )
    rows = pq.read_table(output, columns=["path", "text", "error"]).to_pylist()
    failed = [row for row in rows if row["error"]]
    if failed:
        raise RuntimeError(f"{len(failed)} rows failed, e.g. {failed[0]}")
    texts = [row["text"] for row in sorted(rows, key=lambda r: r["path"])]
    return last_part - started_at, exited, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--file-s", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp())
    settings = Settings(_env_file=None, data_dir=workdir / "data")
    input_dir = workdir / "audio"
    input_dir.mkdir()
    paths, texts = make_files(input_dir, args.minutes, args.file_s)
    audio_s = sum(decode_audio(p, max_duration_s=3600).shape[0] for p in paths) / SAMPLE_RATE
    print(f"{len(paths)} files, {audio_s:.0f} s of audio")
    inproc: list[tuple[float, str]] = []
    runs: list[tuple[float, float, list[str]]] = []
    load: list[float] = []  # the machine is shared: the 1-minute load average, per round
    for index in range(args.rounds):
        load.append(os.getloadavg()[0])
        inproc.append(in_process(settings, paths))
        print(f"round {index + 1} in-process: {inproc[-1][0]:.1f} s")
        runs.append(bulk(input_dir, workdir))
        print(f"round {index + 1} bulk:       {runs[-1][0]:.1f} s (exit {runs[-1][1]:.1f} s)")
    shutil.rmtree(workdir, ignore_errors=True)

    b_wall, b_text = min(inproc)
    k_wall, k_exit, k_texts = min(runs, key=lambda r: r[0])
    result: dict[str, Any] = {
        "files": len(paths),
        "audio_s": audio_s,
        "model": settings.whisper.model,
        "cpu_threads": settings.whisper.cpu_threads,
        "rounds": args.rounds,
        "in_process_s": b_wall,
        "bulk_s": k_wall,
        "bulk_exit_s": k_exit,
        "in_process_audio_s_per_s": audio_s / b_wall,
        "bulk_audio_s_per_s": audio_s / k_wall,
        "ratio_bulk_over_in_process": b_wall / k_wall,
        "target_met": b_wall / k_wall >= 0.8,
        "wer_in_process": word_error_rate(" ".join(texts), b_text),
        "wer_bulk": word_error_rate(" ".join(texts), " ".join(k_texts)),
        "all_rounds_s": {"in_process": [r[0] for r in inproc], "bulk": [r[0] for r in runs]},
        "ratio_per_round": [b[0] / k[0] for b, k in zip(inproc, runs, strict=True)],
        "load_average_1m_at_round_start": load,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bulk.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
