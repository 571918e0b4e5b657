"""Throughput of the Serve app against the in-process limits of faster-whisper.

    .venv/bin/python benchmarks/throughput.py        # or: make bench

On the English fixture clips (16 clips of 3-24 s, 140 s of speech) and one ~4-minute file
built from them, with the same model, thread count and decoding options everywhere:

  (a) in-process sequential `WhisperModel.transcribe`, clip after clip, decoding included;
  (b) in-process `BatchedInferencePipeline` over all clips joined with 1 s of silence,
      segment timestamps on, decoding included: the library's best use of the hardware;
  (c) the Serve app over HTTP at concurrency 1, 4 and 16;
  (d) the 4-minute file through HTTP, against (b) on that file.

The machine is noisy, so (a), (b), (c16), (b on the long file) and (d) run interleaved
`--rounds` times and the best of each is kept. Prints audio-seconds per wall-second, p50/p95
latency and the ratios; writes benchmarks/results/throughput.json and throughput.png.
The Serve app runs serve_config.yaml as shipped, batching config included (the replica's
stats, with the config in force, are saved under "whisper_replica").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.core.settings import Settings  # noqa: E402
from services.transcription.audio import decode_audio  # noqa: E402
from services.transcription.domain import SAMPLE_RATE  # noqa: E402
from services.transcription.model_files import resolve_model_dir  # noqa: E402
from tests import serve_local as local  # noqa: E402
from tests.audio_variants import encode_flac  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
RESULTS = ROOT / "benchmarks" / "results"
LONG_FILE_S = 240.0


@dataclass
class Run:
    name: str
    audio_s: float
    wall_s: float
    latencies_s: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.audio_s / self.wall_s

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else float("nan")


def load_clips() -> list[tuple[str, bytes, float]]:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    return [
        (c["file"], (FIXTURES / c["file"]).read_bytes(), c["duration_s"])
        for c in manifest["clips"]
        if c["language"] == "en"
    ]


def build_long_file(clips: list[tuple[str, bytes, float]]) -> tuple[bytes, float]:
    gap = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    parts: list[np.ndarray] = []
    while sum(p.shape[0] for p in parts) < LONG_FILE_S * SAMPLE_RATE:
        for _, data, _ in clips:
            parts += [decode_audio(data, max_duration_s=600), gap]
    audio = np.concatenate(parts)[: int(LONG_FILE_S * SAMPLE_RATE)]
    return encode_flac(audio), audio.shape[0] / SAMPLE_RATE


class InProcess:
    """The library baselines, with the replica's model, threads and decoding options."""

    def __init__(self, settings: Settings) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.model = WhisperModel(
            str(resolve_model_dir(settings.whisper.model, settings.model_cache_dir)),
            device="cpu",
            compute_type="int8",
            cpu_threads=settings.whisper.cpu_threads,
        )
        self.pipeline = BatchedInferencePipeline(self.model)
        self.options = {
            "beam_size": settings.whisper.beam_size,
            "language": "en",
            "temperature": 0.0,
        }
        self.batch_size = settings.whisper.decode_batch_size

    def sequential(self, clips: list[tuple[str, bytes, float]]) -> Run:
        run = Run("a_sequential", sum(c[2] for c in clips), 0.0)
        started = time.perf_counter()
        for _, data, _ in clips:
            t0 = time.perf_counter()
            audio = decode_audio(data, max_duration_s=600)
            segments, _ = self.model.transcribe(audio, **self.options)
            list(segments)
            run.latencies_s.append(time.perf_counter() - t0)
        run.wall_s = time.perf_counter() - started
        return run

    def batched(self, name: str, files: list[bytes], audio_s: float) -> Run:
        started = time.perf_counter()
        gap = np.zeros(SAMPLE_RATE, dtype=np.float32)
        parts: list[np.ndarray] = []
        for data in files:
            parts += [decode_audio(data, max_duration_s=600), gap]
        segments, _ = self.pipeline.transcribe(
            np.concatenate(parts[:-1]),
            without_timestamps=False,
            batch_size=self.batch_size,
            **self.options,
        )
        list(segments)
        return Run(name, audio_s, time.perf_counter() - started)


async def http_run(
    url: str,
    name: str,
    requests: list[tuple[str, bytes, float]],
    concurrency: int,
    fields: dict[str, str] | None = None,
) -> Run:
    """`fields`: the form fields of every request (default `model=whisper-1`)."""
    queue = list(requests)
    run = Run(name, sum(r[2] for r in requests), 0.0)

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            filename, data, _ = queue.pop(0)
            t0 = time.perf_counter()
            response = await client.post(
                "/v1/audio/transcriptions",
                files={"file": (filename, data)},
                data=fields or {"model": "whisper-1"},
            )
            response.raise_for_status()
            run.latencies_s.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        run.wall_s = time.perf_counter() - started
    return run


def best(runs: list[Run]) -> Run:
    return max(runs, key=lambda r: r.throughput)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [1, 4, 16]
    served = [result["throughput"][f"c{n}"] for n in levels]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(levels, served, "o-", label="Serve app over HTTP")
    ax.axhline(result["throughput"]["b_batched"], color="tab:green", ls="--",
               label="(b) in-process BatchedInferencePipeline")  # fmt: skip
    ax.axhline(result["throughput"]["a_sequential"], color="tab:red", ls=":",
               label="(a) in-process sequential transcribe")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(n) for n in levels])
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("audio seconds per wall second")
    ax.set_title(f"rayscribe throughput, {result['model']} on {result['machine']['cores']} cores")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    settings = Settings(_env_file=None, data_dir=ROOT / ".rayscribe")
    clips = load_clips()
    long_file, long_s = build_long_file(clips)
    clip_audio_s = sum(c[2] for c in clips)
    print(f"{len(clips)} clips, {clip_audio_s:.1f} s of speech; long file {long_s:.0f} s")

    inproc = InProcess(settings)
    # The result cache would answer repeated clips without the model: off, as the issue asks.
    overrides = {"data_dir": str(settings.data_dir), "cache": {"enabled": False}}
    config = local.load_config(port=local.free_port(), settings=overrides)
    url = local.deploy(config)
    from ray import serve

    stats_handle = serve.get_deployment_handle("WhisperTranscriber", app_name=local.APP_NAME)

    def replica_stats() -> dict[str, Any]:
        stats: dict[str, Any] = stats_handle.stats.remote().result(timeout_s=30)
        return stats

    c16_batches: list[int] = []

    def c16_round() -> Run:
        # Engine batches per round: how well requests shared batches, whatever the noise.
        before = replica_stats()["batches"]
        run = asyncio.run(http_run(url, "c16", clips * 2, 16))
        c16_batches.append(replica_stats()["batches"] - before)
        return run

    try:
        # Warm every path once (model pages, VAD, the proxy's connections).
        inproc.sequential(clips[:2])
        asyncio.run(http_run(url, "warm", clips[:4], 4))

        rounds: dict[str, list[Run]] = {k: [] for k in ("a", "b", "c16", "b_long", "d")}
        steps: list[tuple[str, Callable[[], Run]]] = [
            ("a", lambda: inproc.sequential(clips)),
            ("b", lambda: inproc.batched("b_batched", [c[1] for c in clips], clip_audio_s)),
            ("c16", c16_round),
            ("b_long", lambda: inproc.batched("b_long", [long_file], long_s)),
            ("d", lambda: asyncio.run(http_run(url, "d", [("long.flac", long_file, long_s)], 1))),
        ]  # fmt: skip
        for index in range(args.rounds):
            for key, step in steps:
                run = step()
                rounds[key].append(run)
                print(f"round {index + 1} {key:>6}: {run.throughput:6.1f} audio-s/s")
        c1 = asyncio.run(http_run(url, "c1", clips, 1))
        c4 = asyncio.run(http_run(url, "c4", clips * 2, 4))
        replica = replica_stats()
    finally:
        local.shutdown()

    a, b, c16 = best(rounds["a"]), best(rounds["b"]), best(rounds["c16"])
    b_long, d = best(rounds["b_long"]), best(rounds["d"])
    a_p50 = a.percentile(50)
    result = {
        "machine": machine(),
        "model": settings.whisper.model,
        "cpu_threads": settings.whisper.cpu_threads,
        "beam_size": settings.whisper.beam_size,
        "rounds": args.rounds,
        "clips": len(clips),
        "clip_audio_s": round(clip_audio_s, 1),
        "long_file_s": round(long_s, 1),
        "throughput": {
            "a_sequential": a.throughput,
            "b_batched": b.throughput,
            "c1": c1.throughput,
            "c4": c4.throughput,
            "c16": c16.throughput,
            "b_long": b_long.throughput,
            "d_long_http": d.throughput,
        },
        "latency_s": {
            "a_p50": a_p50,
            "a_p95": a.percentile(95),
            "c1_p50": c1.percentile(50),
            "c1_p95": c1.percentile(95),
            "c4_p50": c4.percentile(50),
            "c4_p95": c4.percentile(95),
            "c16_p50": c16.percentile(50),
            "c16_p95": c16.percentile(95),
        },
        "ratios": {
            "c16/b": c16.throughput / b.throughput,
            "c16/a": c16.throughput / a.throughput,
            "latency c1/a p50": c1.percentile(50) / a_p50,
            "d/b": d.throughput / b_long.throughput,
        },
        "targets": {
            "c16/b >= 0.8": c16.throughput / b.throughput >= 0.8,
            "c1 p50 <= 1.2 x a p50 + 50 ms": c1.percentile(50) <= 1.2 * a_p50 + 0.05,
            "d/b >= 0.85": d.throughput / b_long.throughput >= 0.85,
        },
        "c16_engine_batches": c16_batches,
        "whisper_replica": replica,
        "all_rounds": {
            k: [asdict(r) | {"throughput": r.throughput} for r in v] for k, v in rounds.items()
        },
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    chart(result, args.out / "throughput.png")

    print(f"\nmachine: {result['machine']['cpu']}, {result['machine']['cores']} cores")
    print(f"{'run':<28}{'audio-s/s':>10}{'p50 s':>9}{'p95 s':>9}")
    for label, run in [
        ("(a) sequential in-process", a), ("(b) batched in-process", b),
        ("(c1) HTTP, 1 at a time", c1), ("(c4) HTTP, 4 concurrent", c4),
        ("(c16) HTTP, 16 concurrent", c16), ("(b) batched, 4-min file", b_long),
        ("(d) HTTP, 4-min file", d),
    ]:  # fmt: skip
        print(
            f"{label:<28}{run.throughput:>10.1f}{run.percentile(50):>9.2f}{run.percentile(95):>9.2f}"
        )
    pairs = zip(rounds["b"], rounds["c16"], strict=True)
    per_round = [c.throughput / b.throughput for b, c in pairs]
    print(f"{'c16/b per round':<28} " + " ".join(f"{ratio:.2f}" for ratio in per_round))
    print(f"{'c16 engine batches per round':<28} {c16_batches} (32 requests each)")
    for name, value in result["ratios"].items():
        print(f"{name:<28}{value:>10.2f}")
    for name, ok in result["targets"].items():
        print(f"target {name}: {'met' if ok else 'MISSED'}")
    print(f"Whisper replica peak RSS: {replica['peak_rss_mb']:.0f} MB")
    print(f"Whisper replica batching config: {replica.get('batching')}")
    print(f"wrote {args.out / 'throughput.json'} and {args.out / 'throughput.png'}")


if __name__ == "__main__":
    main()
