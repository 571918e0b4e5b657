"""Per-model throughput at concurrency 16, with several models served at once.

    .venv/bin/python benchmarks/models.py                      # tiny.en and base
    .venv/bin/python benchmarks/models.py --models tiny.en base --rounds 3

Deploys serve_config.yaml with `whisper.models` set to `--models` (the first is the
default), each model in its own Whisper deployment with an equal share of the Whisper CPUs
(an entry per model, by name, as the README's "Several models" says). For each model, best
of `--rounds` interleaved rounds:

  (b) in-process `BatchedInferencePipeline` on that model over the English clips joined,
      the library's best use of the hardware (as in benchmarks/throughput.py);
  (c16) the Serve app over HTTP, 16 concurrent requests naming that model (32 requests),
      the other models idle;
  (mixed) every model at once: 16 concurrent requests per model, all models together.

Requests send `language=en` so a multilingual model decodes what (b) decodes (no
detection). The result cache is off. Prints audio-seconds per wall-second per model and the
c16/b ratio; writes benchmarks/results/models.json. Figures from a loaded machine mean
little: compare ratios measured in the same run, and rerun on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from throughput import InProcess, Run, best, http_run, load_clips, machine  # noqa: E402

from deployments.transcriber import deployment_name  # noqa: E402
from services.core.settings import Settings  # noqa: E402
from services.transcription.models import ServedModels  # noqa: E402
from tests import serve_local as local  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WHISPER_CPUS = 1.5
"""What serve_config.yaml gives its one Whisper deployment; shared equally by the models."""


def per_model_entries(config: dict[str, Any], models: ServedModels) -> None:
    """One Whisper entry per served model, by name, each with an equal share of the CPUs."""
    (app,) = config["applications"]
    (whisper,) = [d for d in app["deployments"] if d["name"] == "WhisperTranscriber"]
    share = round(WHISPER_CPUS / len(models), 3)
    whisper["ray_actor_options"]["num_cpus"] = share
    for model in models:
        if not model.default:
            entry = copy.deepcopy(whisper)
            entry["name"] = deployment_name(model)
            app["deployments"].append(entry)


async def mixed_run(
    url: str, clips: list[tuple[str, bytes, float]], model_ids: list[str]
) -> list[Run]:
    return list(
        await asyncio.gather(
            *(
                http_run(url, f"mixed_{m}", clips * 2, 16, {"model": m, "language": "en"})
                for m in model_ids
            )
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    data_dir = ROOT / ".rayscribe"
    whisper = {"model": args.models[0], "models": args.models}
    settings = Settings(_env_file=None, data_dir=data_dir, whisper=whisper)
    models = ServedModels.from_settings(settings)
    ids = list(models.ids)
    clips = load_clips()
    audio_s = sum(c[2] for c in clips)
    print(f"models {ids}; {len(clips)} clips, {audio_s:.1f} s of speech")
    inproc = {m: InProcess(models.settings_for(settings, m)) for m in ids}

    overrides = {"data_dir": str(data_dir), "cache": {"enabled": False}, "whisper": whisper}
    config = local.load_config(
        port=local.free_port(),
        settings=overrides,
        edit=lambda config: per_model_entries(config, models),
    )
    url = local.deploy(config)
    rounds: dict[str, dict[str, list[Run]]] = {m: {"b": [], "c16": [], "mixed": []} for m in ids}
    try:
        for m in ids:  # warm every path once
            inproc[m].sequential(clips[:1])
            asyncio.run(http_run(url, "warm", clips[:4], 4, {"model": m, "language": "en"}))
        for index in range(args.rounds):
            for m in ids:
                b = inproc[m].batched("b_batched", [c[1] for c in clips], audio_s)
                fields = {"model": m, "language": "en"}
                c16 = asyncio.run(http_run(url, "c16", clips * 2, 16, fields))
                rounds[m]["b"].append(b)
                rounds[m]["c16"].append(c16)
                print(
                    f"round {index + 1} {m:>10}: b {b.throughput:6.1f}  "
                    f"c16 {c16.throughput:6.1f} audio-s/s"
                )
            for run, m in zip(asyncio.run(mixed_run(url, clips, ids)), ids, strict=True):
                rounds[m]["mixed"].append(run)
                print(f"round {index + 1} {m:>10}: mixed {run.throughput:6.1f} audio-s/s")
    finally:
        local.shutdown()

    result: dict[str, Any] = {
        "machine": machine(),
        "models": ids,
        "whisper_cpus_each": round(WHISPER_CPUS / len(ids), 3),
        "cpu_threads": settings.whisper.cpu_threads,
        "rounds": args.rounds,
        "clips": len(clips),
        "clip_audio_s": round(audio_s, 1),
        "per_model": {},
    }
    print(f"\nmachine: {result['machine']['cpu']}, {result['machine']['cores']} cores")
    print(f"{'model':<12}{'b':>8}{'c16':>8}{'c16 p50 s':>11}{'c16/b':>8}{'mixed':>8}")
    for m in ids:
        b, c16, mixed = (best(rounds[m][k]) for k in ("b", "c16", "mixed"))
        result["per_model"][m] = {
            "b_batched": b.throughput,
            "c16": c16.throughput,
            "c16_p50_s": c16.percentile(50),
            "c16_p95_s": c16.percentile(95),
            "c16/b": c16.throughput / b.throughput,
            "mixed_c16": mixed.throughput,
            "c16/b per round": [
                c.throughput / r.throughput
                for r, c in zip(rounds[m]["b"], rounds[m]["c16"], strict=True)
            ],
        }
        print(
            f"{m:<12}{b.throughput:>8.1f}{c16.throughput:>8.1f}{c16.percentile(50):>11.2f}"
            f"{c16.throughput / b.throughput:>8.2f}{mixed.throughput:>8.1f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "models.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out / 'models.json'}")


if __name__ == "__main__":
    main()
