"""Regenerate the speaker-labelling fixtures under ``tests/fixtures/speakers/``.

Run from the repository root: ``.venv/bin/python scripts/make_speaker_fixtures.py``.
It needs Debian's ``flite`` on the PATH (``apt-get install -y flite``); the tests never do:
they read the committed FLAC files and build 2-, 3- and 4-speaker conversations from them.

The four flite voices used (awb, rms, slt, kal16) are recordings of four different people,
which a speaker encoder tells apart (espeak's voices all come from one synthesiser and it
cannot). Each voice gets the same number of single-turn clips, every one a different
sentence, plus one longer clip kept apart for enrolment (``known_speaker_references``).
``manifest.json`` lists the clips and their durations. Output is 16 kHz mono 16-bit FLAC.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import wave
from pathlib import Path

import av
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT = REPO_ROOT / "tests" / "fixtures" / "speakers"
SAMPLE_RATE = 16_000
VOICES = ("awb", "rms", "slt", "kal16")

TURNS = (
    "The harbour was quiet this morning, and the boats stayed tied up until noon.",
    "I think we should move the meeting to Thursday, since half the team is away.",
    "Could you send me the figures from last quarter before the end of the day?",
    "The new bridge will open next spring if the weather holds through the winter.",
    "My sister bought a bicycle last week and now she rides it to work every day.",
    "Nobody expected the museum to stay open so late on a Sunday evening.",
    "Please remember to water the plants on the balcony while I am travelling.",
    "The train was delayed by twenty minutes because of a signal problem.",
    "We tried the little restaurant near the station and the soup was excellent.",
    "After the storm, the whole village helped to clear the roads of fallen trees.",
    "He spent the afternoon reading old letters he had found in the attic.",
    "The library is looking for volunteers to help with the children's hour.",
    "Our flight leaves early tomorrow, so we should pack our bags tonight.",
    "The football match was cancelled, and the fans went home disappointed.",
    "She learned to play the piano when she was seven years old.",
    "The garden looks wonderful now that the roses have started to bloom.",
)
ENROL = (
    "This is a longer sample of my voice, recorded so that the service can recognise me"
    " later in a conversation."
)
TURNS_PER_VOICE = 4


def synthesise(voice: str, text: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.wav"
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True)
        with wave.open(str(path)) as wav:
            assert wav.getframerate() == SAMPLE_RATE
            assert wav.getnchannels() == 1
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    # Trim flite's leading/trailing near-silence so turns can be butted together.
    loud = np.flatnonzero(np.abs(pcm) > 300)
    return pcm[max(0, loud[0] - 800) : loud[-1] + 800] if loud.size else pcm


def write_flac(path: Path, pcm: np.ndarray) -> None:
    with av.open(str(path), "w", format="flac") as container:
        stream = container.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.flac"):
        old.unlink()
    manifest: dict[str, dict[str, object]] = {}
    for v, voice in enumerate(VOICES):
        turns = []
        for t in range(TURNS_PER_VOICE):
            text = TURNS[v * TURNS_PER_VOICE + t]
            pcm = synthesise(voice, text)
            name = f"{voice}_turn{t + 1}.flac"
            write_flac(OUT / name, pcm)
            turns.append({"file": name, "text": text, "seconds": round(pcm.size / SAMPLE_RATE, 3)})
        pcm = synthesise(voice, ENROL)
        write_flac(OUT / f"{voice}_reference.flac", pcm)
        manifest[voice] = {
            "turns": turns,
            "reference": {
                "file": f"{voice}_reference.flac",
                "seconds": round(pcm.size / SAMPLE_RATE, 3),
            },
        }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
