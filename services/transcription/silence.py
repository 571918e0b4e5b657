"""Where to cut long audio: in a pause before a limit, never through a word if it can be helped.

Shared by the job tracker (it cuts recordings into chunks for the model) and the engine (it
cuts speech runs longer than Whisper's 30 s window). Pure arithmetic on sample indices and
numpy; the VAD that says where speech is lives in the engine, the one module that imports
faster-whisper.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.transcription.domain import SAMPLE_RATE, Waveform

Span = tuple[int, int]
"""[start, end) in samples."""

ENERGY_FRAME_SAMPLES = SAMPLE_RATE // 50
"""20 ms: short enough to land between two words, long enough to average out a waveform."""


def pauses_in(speech: Sequence[Span], start: int, end: int) -> list[Span]:
    """The silences of [start, end), given the speech spans found there (any order)."""
    found: list[Span] = []
    cursor = start
    for span_start, span_end in sorted(speech):
        span_start, span_end = max(span_start, start), min(span_end, end)
        if span_end <= span_start:
            continue
        if span_start > cursor:
            found.append((cursor, span_start))
        cursor = max(cursor, span_end)
    if cursor < end:
        found.append((cursor, end))
    return found


def pause_cut(speech: Sequence[Span], start: int, end: int, min_pause: int) -> int | None:
    """The middle of the longest pause of at least `min_pause` samples in [start, end).

    Ties go to the later pause, which keeps chunks closer to their nominal length. None when
    the window holds no such pause (continuous speech, music): the caller must overlap.
    """
    long_enough = [p for p in pauses_in(speech, start, end) if p[1] - p[0] >= max(min_pause, 1)]
    if not long_enough:
        return None
    best_start, best_end = max(long_enough, key=lambda p: (p[1] - p[0], p[0]))
    return (best_start + best_end) // 2


def quietest_sample(audio: Waveform, start: int, end: int) -> int:
    """The middle of the lowest-energy 20 ms frame of audio[start:end].

    For a hard cut through speech with no pause to use: the quietest instant is most often
    the gap between two words, so the fewest words are split.
    """
    start, end = max(0, start), min(audio.shape[0], end)
    frames = (end - start) // ENERGY_FRAME_SAMPLES
    if frames <= 1:
        return (start + end) // 2
    window = audio[start : start + frames * ENERGY_FRAME_SAMPLES].astype(np.float64)
    energy = np.square(window).reshape(frames, ENERGY_FRAME_SAMPLES).mean(axis=1)
    # The latest of equally quiet frames: a cut late in the window keeps pieces long.
    quietest = frames - 1 - int(np.argmin(energy[::-1]))
    return start + quietest * ENERGY_FRAME_SAMPLES + ENERGY_FRAME_SAMPLES // 2
