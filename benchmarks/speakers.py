"""What speaker labels add to a 3-minute transcription with tiny.en (issue 12, experimental).

    .venv/bin/python benchmarks/speakers.py      # needs the `rayscribe[diarization]` extra

In process, no Serve: one 3-minute conversation of four flite voices with short pauses
(built from tests/fixtures/speakers). Each round times, one after the other:

  (t) the transcription alone (tiny.en, word timestamps, as diarized_json asks for);
  (d) the transcription and the diarization started together on two threads, as the
      service runs them (a Whisper replica and the SpeakerDiarizer deployment side by side).

Rounds interleave (the machine is shared) and the best of each is kept; the target is
d / t <= 1.30. Also prints the diarization's DER and speaker count for that file, and its
own real-time factor. Writes benchmarks/results/speakers.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.core.settings import Settings  # noqa: E402
from services.diarization.metrics import der  # noqa: E402
from services.diarization.pipeline import Diarizer, Turn  # noqa: E402
from services.transcription.domain import TranscriptionOptions  # noqa: E402
from services.transcription.engine import WhisperEngine  # noqa: E402
from tests.diarization.conversations import conversation  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "speakers.json"


def _diarize(
    diarizer: Diarizer,
    audio: np.ndarray,
    begin: float,
    found: list[list[Turn]],
    finished: list[float],
) -> None:
    found.append(diarizer.diarize(audio))
    finished.append(time.perf_counter() - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    audio, truth = conversation(4, rounds=11, gap_s=0.3, seed=1)
    seconds = audio.size / 16_000
    engine = WhisperEngine.from_settings(Settings())
    diarizer = Diarizer()
    options = TranscriptionOptions(word_timestamps=True)
    engine.transcribe(audio[: 16_000 * 5], options)  # warm both up
    diarizer.diarize(audio[: 16_000 * 10])

    alone: list[float] = []
    together: list[float] = []
    diarize_only: list[float] = []
    turns: list[Turn] = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        engine.transcribe(audio, options)
        alone.append(time.perf_counter() - start)

        found: list[list[Turn]] = []
        finished: list[float] = []

        start = time.perf_counter()
        thread = threading.Thread(target=_diarize, args=(diarizer, audio, start, found, finished))
        thread.start()
        engine.transcribe(audio, options)
        thread.join()
        together.append(time.perf_counter() - start)
        diarize_only.append(finished[0])
        turns = found[0]

    result = {
        "audio_s": round(seconds, 1),
        "transcribe_s": round(min(alone), 2),
        "transcribe_and_diarize_s": round(min(together), 2),
        "ratio": round(min(together) / min(alone), 3),
        "target_ratio": 1.30,
        "diarize_s_while_transcribing": round(min(diarize_only), 2),
        "der": round(der(truth, turns), 4),
        "speakers_found": len({t.speaker for t in turns}),
        "speakers_true": len({t.speaker for t in truth}),
        "rounds": args.rounds,
    }
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
