"""A bulk input generated at test time from the committed fixtures.

41 good files: each English clip as its FLAC and re-encoded in another container, rate and
channel layout (MP3, Ogg/Opus, M4A/AAC, WAV, WebM), eight clips a third time, plus 5 s of
silence; some in a subdirectory. 3 broken ones: text named `.wav` (not audio), random
bytes named `.mp3` (corrupt), two hours of silence (over the duration cap the tests set).
Plus files a listing must leave out: a `.txt` and a hidden file.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import jiwer

from tests.audio_variants import Variant, encode, fixture_audio
from tests.conftest import ENGLISH, FIXTURES, SILENCE, TWO_HOURS, normalise

MAX_DURATION_S = 120.0
"""The per-file cap the bulk tests run with (the two-hour file is over it)."""

VARIANTS = (
    Variant("mp3", "libmp3lame", 22050, 2, "mp3", "mp3", bit_rate=128_000),
    Variant("ogg", "libopus", 48000, 1, "opus", "opus"),
    Variant("ipod", "aac", 44100, 1, "m4a", "aac"),
    Variant("wav", "pcm", 8000, 1, "wav", "pcm", lossless=True, sample_format="s16"),
    Variant("webm", "libopus", 16000, 2, "webm", "opus"),
)
BROKEN = {
    "broken/not_audio.wav": "invalid_audio",
    "broken/corrupt.mp3": "invalid_audio",
    "broken/too_long.flac": "audio_too_long",
}


@dataclass(frozen=True)
class Corpus:
    root: Path
    expected: dict[str, str]
    """Relative path of each good file -> the text spoken in it."""
    broken: dict[str, str]
    """Relative path of each broken file -> the error code its row must have."""

    @property
    def count(self) -> int:
        return len(self.expected) + len(self.broken)


def build(root: Path) -> Corpus:
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    for index, clip in enumerate(ENGLISH):
        shutil.copy(clip.path, root / clip.name)
        expected[clip.name] = clip.text
        extra = [VARIANTS[index % len(VARIANTS)]]
        if index < 8:
            extra.append(VARIANTS[(index + 2) % len(VARIANTS)])
        for variant in extra:
            name = f"more/{clip.path.stem}.{variant.rate}.{variant.suffix}"
            (root / name).parent.mkdir(exist_ok=True)
            (root / name).write_bytes(encode(variant, fixture_audio(clip.path)))
            expected[name] = clip.text
    shutil.copy(SILENCE, root / "silence.flac")
    expected["silence.flac"] = ""
    (root / "broken").mkdir()
    shutil.copy(FIXTURES / "hostile" / "text.wav", root / "broken/not_audio.wav")
    shutil.copy(FIXTURES / "hostile" / "random_bytes.mp3", root / "broken/corrupt.mp3")
    shutil.copy(TWO_HOURS, root / "broken/too_long.flac")
    (root / "notes.txt").write_text("not an input")
    (root / ".hidden.wav").write_bytes(b"not listed")
    return Corpus(root, expected, dict(BROKEN))


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    """WER over all files at once (each file's words count), silence files left out."""
    pairs = [
        (normalise(r), normalise(h) or "<empty>")
        for r, h in zip(references, hypotheses, strict=True)
        if r
    ]
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))
