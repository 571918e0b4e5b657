"""Speech clips found while the audio is still arriving, exactly as the whole-file VAD finds them.

faster-whisper's `get_speech_timestamps` reads Silero's speech probability for every 512-sample
frame of the whole file, walks the frames once with a small state machine, then pads each
stretch of speech by looking at its neighbours. `SpeechTracker` does the same walk frame by
frame as probabilities come in (the adapter computes them block by block with the model's
state carried, which gives the same numbers), and hands out each clip, padded, as soon as
nothing that comes later can change it: once the next stretch of speech has begun, or the
silence after it is long enough that the padding cannot depend on what follows.

So a streamed request's first items reach the model after VAD has heard only their own
audio, and the clips (hence the items) are the ones the whole-file path makes; a unit test
holds the two equal on generated audio. Plain arithmetic, no model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from services.transcription.domain import SAMPLE_RATE, VadSettings

FRAME_SAMPLES = 512
MIN_SILENCE_AT_MAX_SPEECH = SAMPLE_RATE * 98 / 1000
"""A pause this long may end a stretch that reached the longest allowed (the library's 98 ms)."""


@dataclass(frozen=True)
class VadLimits:
    """`VadSettings` in samples, as the library derives them (floats where it keeps floats)."""

    threshold: float
    neg_threshold: float
    max_speech: float
    min_silence: float
    pad: float

    @classmethod
    def of(cls, vad: VadSettings, *, max_speech_s: float) -> VadLimits:
        pad = SAMPLE_RATE * vad.speech_pad_ms / 1000
        return cls(
            threshold=vad.threshold,
            neg_threshold=max(vad.threshold - 0.15, 0.01),
            max_speech=SAMPLE_RATE * max_speech_s - FRAME_SAMPLES - 2 * pad,
            min_silence=SAMPLE_RATE * vad.min_silence_duration_ms / 1000,
            pad=pad,
        )


class SpeechTracker:
    """Frame probabilities in (`push`), final padded clips out, in order."""

    def __init__(self, limits: VadLimits) -> None:
        self._limits = limits
        self._frames = 0
        self._triggered = False
        self._start: int | None = None  # the open stretch's start
        self._temp_end = 0
        self._prev_end = 0
        self._next_start = 0
        self._raw: list[tuple[int, int]] = []  # closed stretches, unpadded
        self._given = 0  # clips handed out so far

    def push(self, probabilities: Iterable[float]) -> list[tuple[int, int]]:
        """Walk these frames (the ones after those already pushed); the clips now final."""
        for probability in probabilities:
            self._step(float(probability), FRAME_SAMPLES * self._frames)
            self._frames += 1
        return self._final(None)

    def finish(self, total_samples: int) -> list[tuple[int, int]]:
        """After the last frame (the padded one): every clip not handed out yet."""
        if self._start is not None and total_samples - self._start > 0:
            self._raw.append((self._start, total_samples))
        self._start = None
        return self._final(total_samples)

    def _step(self, p: float, at: int) -> None:
        limits = self._limits
        if p >= limits.threshold and self._temp_end:
            self._temp_end = 0
            if self._next_start < self._prev_end:
                self._next_start = at
        if p >= limits.threshold and not self._triggered:
            self._triggered = True
            self._start = at
            return
        if self._triggered and self._start is not None and at - self._start > limits.max_speech:
            if self._prev_end:
                self._raw.append((self._start, self._prev_end))
                if self._next_start < self._prev_end:
                    self._triggered = False
                    self._start = None
                else:
                    self._start = self._next_start
                self._prev_end = self._next_start = self._temp_end = 0
            else:
                self._raw.append((self._start, at))
                self._start = None
                self._prev_end = self._next_start = self._temp_end = 0
                self._triggered = False
                return
        if p < limits.neg_threshold and self._triggered:
            if not self._temp_end:
                self._temp_end = at
            if at - self._temp_end > MIN_SILENCE_AT_MAX_SPEECH:
                self._prev_end = self._temp_end
            if at - self._temp_end < limits.min_silence:
                return
            assert self._start is not None
            if self._temp_end - self._start > 0:
                self._raw.append((self._start, self._temp_end))
            self._start = None
            self._prev_end = self._next_start = self._temp_end = 0
            self._triggered = False

    def _final(self, total: int | None) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        pad = self._limits.pad
        heard = FRAME_SAMPLES * self._frames
        while self._given < len(self._raw):
            k = self._given
            start, end = self._raw[k]
            following = (
                self._raw[k + 1][0]
                if k + 1 < len(self._raw)
                else self._start
                if self._start is not None
                else None
            )
            if following is None and total is None and heard - end < 2 * pad:
                break  # a stretch starting soon would share the silence after this one
            if k == 0:
                padded_start = int(max(0, start - pad))
            else:
                gap = start - self._raw[k - 1][1]
                cut = gap // 2 if gap < 2 * pad else pad
                padded_start = int(max(0, start - cut))
            if following is not None and following - end < 2 * pad:
                padded_end = end + int((following - end) // 2)
            elif total is not None:
                padded_end = int(min(total, end + pad))
            else:
                padded_end = int(end + pad)
            out.append((padded_start, padded_end))
            self._given += 1
        return out
