"""What the engine decodes again, in process: windows, CPU seconds and WER, no Serve.

    .venv/bin/python benchmarks/engine_retries.py [--bulk-minutes 10] [--before main]

Two workloads, each through `WhisperEngine` as the service runs it:

  (a) the 20-minute recording of `long_job.py`, cut into the job's chunks by the tracker's
      own `Chunker`, each chunk through `WhisperEngine.transcribe`, joined by `merge_chunks`;
  (b) the files of `bulk.py`, through `find_items`, `settle` and `run` in groups of
      `GROUP_WINDOWS`, as the bulk stage runs them (int16 speech included).

For each: 30 s windows decoded (as packed, and again: cut short, missed tails, fallbacks),
CPU seconds of this process (`time.process_time`: all the model's threads), and WER; and
the library's `BatchedInferencePipeline` on the same audio, measured in the same run, as
the baseline. Sides run interleaved `--rounds` times and the least CPU of each is kept (the
machine is shared). With `--before REF`, the engine of git revision REF (engine.py only; the
helpers are this tree's) is measured too, in the same run, for a before/after comparison.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bulk import make_files  # noqa: E402
from services.core.settings import JobsSettings, Settings  # noqa: E402
from services.jobs.chunking import BLOCK_S, Chunker, ChunkPlan  # noqa: E402
from services.transcription.assembly import assemble  # noqa: E402
from services.transcription.audio import decode_audio  # noqa: E402
from services.transcription.domain import (  # noqa: E402
    SAMPLE_RATE,
    DecodeOptions,
    TranscriptionOptions,
    Waveform,
)
from services.transcription.engine import WhisperEngine, find_items  # noqa: E402
from services.transcription.merge import ChunkTranscript, merge_chunks  # noqa: E402
from services.transcription.model_files import resolve_model_dir  # noqa: E402
from tests.conftest import word_error_rate  # noqa: E402
from tests.long_audio import build  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DURATION_S = 1200.0
GROUP_WINDOWS = 32  # services.bulk.transcribe.GROUP_WINDOWS (not imported: it pulls in Ray)


def engine_class(ref: str | None) -> type[WhisperEngine]:
    """This tree's engine, or `engine.py` as it was at git revision `ref`."""
    if ref is None:
        return WhisperEngine
    source = subprocess.run(
        ["git", "show", f"{ref}:services/transcription/engine.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(f"engine_at_{ref}")
    module.__file__ = f"<engine.py at {ref}>"
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    cls: type[WhisperEngine] = module.WhisperEngine
    return cls


class Counted:
    """An engine whose decoder counts the windows it decodes, and its `run`s' stats."""

    def __init__(self, cls: type[WhisperEngine], settings: Settings) -> None:
        self.engine = cls.from_settings(settings)
        self.engine.warm_up()
        self.decoded = 0
        self.main = 0
        self.retried = 0
        decoder = self.engine._decoder
        original = decoder.decode

        def counting(audios: Any, *args: Any, **kwargs: Any) -> Any:
            self.decoded += len(audios)
            return original(audios, *args, **kwargs)

        decoder.decode = counting  # type: ignore[method-assign]
        run = self.engine.run

        def counted_run(items: Any, **kwargs: Any) -> Any:
            out = run(items, **kwargs)
            self.main += self.engine.last_run.windows
            self.retried += self.engine.last_run.retried
            return out

        self.engine.run = counted_run  # type: ignore[method-assign]

    def reset(self) -> None:
        self.decoded = self.main = self.retried = 0

    def counts(self) -> dict[str, int]:
        return {
            "windows": self.decoded,
            "main_windows": self.main,
            "retry_windows": self.decoded - self.main,
            "retried_items": self.retried,
        }


def cpu(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.process_time()
    out = fn()
    return time.process_time() - started, out


def job_chunks(audio: Waveform) -> Iterator[tuple[float, float, Waveform]]:
    """The tracker's chunks of `audio`: (start s, end s, audio)."""
    settings = JobsSettings()
    block = int(BLOCK_S * SAMPLE_RATE)
    blocks = (audio[k : k + block] for k in range(0, audio.shape[0], block))
    chunker = Chunker(blocks, ChunkPlan.of(settings.chunk_s, settings), known=[])
    while (chunk := chunker.next()) is not None:
        yield chunk.start_s, chunk.end_s, chunk.audio
        if chunk.last:
            return


def long_job(engine: WhisperEngine, chunks: list[tuple[float, float, Waveform]]) -> str:
    options = TranscriptionOptions(decode=DecodeOptions(language="en"), word_timestamps=True)
    parts = [
        ChunkTranscript(start, end, engine.transcribe(audio, options))
        for start, end, audio in chunks
    ]
    return merge_chunks(parts, chunks[-1][1]).text


def bulk(engine: WhisperEngine, files: list[Waveform]) -> list[str]:
    from services.bulk.prepare import PackedItem

    options = TranscriptionOptions(decode=DecodeOptions(language="en"), word_timestamps=True)
    prepared = []
    for audio in files:  # the CPU stage (VAD, int16), not measured on either side
        items = [PackedItem.of(i).work_item(options) for i in find_items(audio, options)]
        prepared.append((items, audio.shape[0] / SAMPLE_RATE))

    def engine_stage() -> list[str]:
        texts: list[str] = []
        groups: list[list[int]] = [[]]
        size = 0
        for k, (items, _) in enumerate(prepared):
            samples = sum(i.samples for i in items)
            if groups[-1] and size + samples > GROUP_WINDOWS * 30 * SAMPLE_RATE:
                groups.append([])
                size = 0
            groups[-1].append(k)
            size += samples
        for group in groups:
            settled = [
                engine.settle(prepared[k][0], options, duration_s=prepared[k][1]) for k in group
            ]
            results = engine.run([i for p in settled for i in p.items])
            start = 0
            for p in settled:
                texts.append(assemble(p, results[start : start + len(p.items)]).text)
                start += len(p.items)
        return texts

    return engine_stage()


def pipeline(settings: Settings) -> Any:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(
        str(resolve_model_dir(settings.whisper.model, settings.model_cache_dir)),
        device="cpu",
        compute_type="int8",
        cpu_threads=settings.whisper.cpu_threads,
    )
    return BatchedInferencePipeline(model)


def pipeline_text(pipe: Any, settings: Settings, audio: Waveform, *, words: bool) -> str:
    segments, _ = pipe.transcribe(
        audio,
        language="en",
        beam_size=settings.whisper.beam_size,
        temperature=0.0,
        word_timestamps=words,
        without_timestamps=False,
        batch_size=settings.whisper.decode_batch_size,
    )
    return "".join(s.text for s in segments)


def _keep(
    out: dict[str, Any], name: str, seconds: float, wer: float, counts: dict[str, int]
) -> None:
    """Record one round of `name`: the least CPU seconds so far, every round's too."""
    side = out.setdefault(name, {"cpu_s": seconds, "cpu_s_per_round": []})
    side["cpu_s"] = min(side["cpu_s"], seconds)
    side["cpu_s_per_round"].append(seconds)
    side.update(wer=wer, **counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bulk-minutes", type=float, default=10.0)
    parser.add_argument("--before", default=None, help="a git revision to compare with")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--skip", choices=["long", "bulk"], default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    settings = Settings(_env_file=None)
    workdir = Path(tempfile.mkdtemp())
    recording = build(DURATION_S, [300.0, 600.0, 900.0], no_pause_s=[0, 80, 0])
    long_audio = np.concatenate(list(recording.samples()))
    chunks = list(job_chunks(long_audio))
    paths, texts = make_files(workdir, args.bulk_minutes, 60.0)
    files = [decode_audio(p, max_duration_s=3600) for p in paths]
    bulk_ref = " ".join(texts)
    gap = np.zeros(SAMPLE_RATE, dtype=np.float32)
    bulk_joined = np.concatenate([x for f in files for x in (f, gap)])

    engines = {"after": Counted(engine_class(None), settings)}
    if args.before:
        engines = {"before": Counted(engine_class(args.before), settings), **engines}
    pipe = pipeline(settings)
    load: list[float] = []  # the machine is shared: the 1-minute load average, per round
    result: dict[str, Any] = {
        "model": settings.whisper.model,
        "cpu_threads": settings.whisper.cpu_threads,
        "rounds": args.rounds,
        "long_job": {"audio_s": DURATION_S, "chunks": len(chunks)},
        "bulk": {"files": len(files), "audio_s": sum(f.shape[0] for f in files) / SAMPLE_RATE},
    }
    workloads: dict[str, tuple[str, Callable[[], str], Callable[[WhisperEngine], str]]] = {
        "long_job": (
            recording.text,
            lambda: pipeline_text(pipe, settings, long_audio, words=True),
            lambda engine: long_job(engine, chunks),
        ),
        "bulk": (
            bulk_ref,
            lambda: pipeline_text(pipe, settings, bulk_joined, words=False),
            lambda engine: " ".join(bulk(engine, files)),
        ),
    }
    for workload, (reference, baseline, through) in workloads.items():
        if args.skip == workload.split("_")[0]:
            continue
        out = result[workload]
        for round_ in range(args.rounds):  # interleaved; the least CPU of each side is kept
            load.append(os.getloadavg()[0])
            seconds, text = cpu(baseline)
            _keep(out, "pipeline", seconds, word_error_rate(reference, text), {})
            for name, counted in engines.items():
                counted.reset()
                seconds, text = cpu(functools.partial(through, counted.engine))
                _keep(out, name, seconds, word_error_rate(reference, text), counted.counts())
                print(workload, round_ + 1, name, out[name], flush=True)
        for name in engines:
            out[f"pipeline_cpu_over_{name}_cpu"] = out["pipeline"]["cpu_s"] / out[name]["cpu_s"]
    result["load_average_1m_at_round_starts"] = load
    result["load_average_1m_at_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine_retries.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
