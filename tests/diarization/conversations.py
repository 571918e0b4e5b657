"""Conversations built at test time from the committed single-turn flite clips.

Each voice in tests/fixtures/speakers is a different recorded person. A conversation is a
sequence of (voice, turn) clips, butted together or separated by a gap, with the reference
timeline that produced it.
"""

from __future__ import annotations

import base64
import io
import json
import wave
from functools import lru_cache
from pathlib import Path

import numpy as np

from services.diarization.pipeline import Turn
from services.transcription.audio import decode_audio

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "speakers"
SAMPLE_RATE = 16_000
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
VOICES = ("awb", "rms", "slt", "kal16")


@lru_cache(maxsize=64)
def clip(name: str) -> np.ndarray:
    return decode_audio((FIXTURES / name).read_bytes(), max_duration_s=60)


def turn_file(voice: str, index: int) -> str:
    return str(MANIFEST[voice]["turns"][index % len(MANIFEST[voice]["turns"])]["file"])


def reference_audio(voice: str) -> np.ndarray:
    return clip(str(MANIFEST[voice]["reference"]["file"]))


def conversation(
    speakers: int, rounds: int = 3, gap_s: float = 0.0, seed: int = 0
) -> tuple[np.ndarray, list[Turn]]:
    """`rounds` rounds in which each of the first `speakers` voices speaks once, in a
    shuffled order per round (never the same voice twice in a row)."""
    rng = np.random.default_rng(seed)
    voices = list(VOICES[:speakers])
    order: list[str] = []
    for _ in range(rounds):
        round_order = list(rng.permutation(voices))
        if order and round_order[0] == order[-1]:
            round_order.reverse()
        order.extend(str(v) for v in round_order)
    used: dict[str, int] = {}
    pieces: list[np.ndarray] = [np.zeros(int(0.5 * SAMPLE_RATE), dtype=np.float32)]
    turns: list[Turn] = []
    cursor = 0.5
    gap = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.float32)
    for i, voice in enumerate(order):
        audio = clip(turn_file(voice, used.get(voice, 0)))
        used[voice] = used.get(voice, 0) + 1
        if i and gap.size:
            pieces.append(gap)
            cursor += gap.size / SAMPLE_RATE
        pieces.append(audio)
        turns.append(Turn(cursor, cursor + audio.size / SAMPLE_RATE, voice))
        cursor += audio.size / SAMPLE_RATE
    pieces.append(np.zeros(int(0.5 * SAMPLE_RATE), dtype=np.float32))
    return np.concatenate(pieces).astype(np.float32), turns


def wav_bytes(audio: np.ndarray) -> bytes:
    """16 kHz mono 16-bit WAV of a float waveform."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def data_url(audio: bytes, mime: str = "audio/wav") -> str:
    """Audio bytes as the data URL a `known_speaker_references[]` field carries."""
    return f"data:{mime};base64,{base64.b64encode(audio).decode()}"
