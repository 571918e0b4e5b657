"""Streaming an 8-minute file against the same request answered at once (issue 12).

    .venv/bin/python benchmarks/streaming.py          # or: make bench-stream

One Serve app (serve_config.yaml, tiny.en, the result cache off), one 8-minute recording of
read sentences with pauses (`tests/long_audio.py`). Each round sends, one after the other:

  (n) POST /v1/audio/transcriptions, json: the time to the whole answer;
  (s) the same with stream=true: the time to the first `transcript.text.delta` and to
      `transcript.text.done`.

Rounds interleave (the machine is shared) and the best of each figure is kept. Targets:
first delta <= 0.25 x (n), streamed total within 15 % of (n). Writes
benchmarks/results/streaming.json. On a loaded machine the figures say little; rerun on a
quiet one.
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
from tests import serve_local as local  # noqa: E402
from tests.conftest import word_error_rate  # noqa: E402
from tests.long_audio import build  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DURATION_S = 480.0
FIRST_DELTA_TARGET = 0.25
TOTAL_TARGET = 1.15


def plain(url: str, path: Path) -> tuple[float, str]:
    with httpx.Client(base_url=url, timeout=600) as client, path.open("rb") as f:
        started = time.perf_counter()
        response = client.post(
            "/v1/audio/transcriptions",
            files={"file": (path.name, f)},
            data={"model": "whisper-1"},
        )
        wall = time.perf_counter() - started
    response.raise_for_status()
    return wall, str(response.json()["text"])


def streamed(url: str, path: Path) -> tuple[float, float, str, int]:
    """(time to the first delta, time to done, the done text, deltas received)."""
    first: float | None = None
    deltas = 0
    text = ""
    with httpx.Client(base_url=url, timeout=600) as client, path.open("rb") as f:
        started = time.perf_counter()
        with client.stream(
            "POST",
            "/v1/audio/transcriptions",
            files={"file": (path.name, f)},
            data={"model": "whisper-1", "stream": "true"},
        ) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                event: dict[str, Any] = json.loads(line[len("data: ") :])
                if event["type"] == "transcript.text.delta":
                    deltas += 1
                    if first is None:
                        first = time.perf_counter() - started
                elif event["type"] == "transcript.text.done":
                    text = str(event["text"])
                elif event["type"] == "error":
                    raise RuntimeError(f"the stream failed: {event}")
        total = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the stream sent no delta")
    return first, total, text, deltas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp())
    (workdir / "data").mkdir()
    settings = Settings(_env_file=None, data_dir=workdir / "data")
    upgrade(settings.database_url)
    recording = build(DURATION_S, [])
    path = recording.write_flac(workdir / "eight_minutes.flac")
    overrides = {"data_dir": str(settings.data_dir), "cache": {"enabled": False}}
    config = local.load_config(port=local.free_port(), settings=overrides)
    url = local.deploy(config)
    plains: list[tuple[float, str]] = []
    streams: list[tuple[float, float, str, int]] = []
    load: list[float] = []
    try:
        plain(url, path)  # warm-up: first-request costs count in neither figure
        for index in range(args.rounds):
            load.append(os.getloadavg()[0])
            plains.append(plain(url, path))
            streams.append(streamed(url, path))
            print(
                f"round {index + 1}: plain {plains[-1][0]:.1f} s, first delta "
                f"{streams[-1][0]:.1f} s, streamed {streams[-1][1]:.1f} s"
            )
    finally:
        local.shutdown()

    n_wall = min(p[0] for p in plains)
    first = min(s[0] for s in streams)
    s_wall = min(s[1] for s in streams)
    result = {
        "audio_s": DURATION_S,
        "model": settings.whisper.model,
        "rounds": args.rounds,
        "plain_s": n_wall,
        "first_delta_s": first,
        "streamed_s": s_wall,
        "first_delta_over_plain": first / n_wall,
        "streamed_over_plain": s_wall / n_wall,
        "first_delta_target_met": first / n_wall <= FIRST_DELTA_TARGET,
        "streamed_total_target_met": s_wall / n_wall <= TOTAL_TARGET,
        "deltas": streams[0][3],
        "wer_plain": word_error_rate(recording.text, plains[0][1]),
        "wer_streamed": word_error_rate(recording.text, streams[0][2]),
        "all_rounds_s": {
            "plain": [p[0] for p in plains],
            "first_delta": [s[0] for s in streams],
            "streamed": [s[1] for s in streams],
        },
        "load_average_1m_at_round_start": load,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
