"""Encode the committed speech fixtures into every container the service accepts, at test time.

A variant is one (container, codec, sample rate, channels, sample format) combination. The
reference is the 16 kHz fixture; a variant is made by resampling it to the variant's rate,
optionally making it stereo, and encoding it with PyAV's own encoders. What a variant must
decode to is the reference put through the same rate conversion (16 kHz -> rate -> 16 kHz),
so the comparison measures the codec and the decoder, not the resampler.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from services.transcription.audio import decode_audio
from services.transcription.domain import SAMPLE_RATE, Waveform

RATES = (8000, 16000, 22050, 44100, 48000)
OPUS_RATES = (8000, 16000, 48000)  # Opus knows 8/12/16/24/48 kHz only
MP2_RATES = (16000, 22050, 44100, 48000)  # MPEG-1/2 layer II has no 8 kHz (that is MPEG-2.5)
# The right channel is a quieter copy, so any downmix stays proportional to the reference.
RIGHT_GAIN = 0.5


@dataclass(frozen=True)
class Variant:
    muxer: str  # FFmpeg muxer used to write it
    encoder: str
    rate: int
    channels: int
    suffix: str
    codec: str  # the codec family reported when decoding (for the report)
    lossless: bool = False
    sample_format: str | None = None  # encoder sample format when it matters (WAV depth)
    bit_rate: int | None = None

    @property
    def id(self) -> str:
        depth = {"s16": "-16bit", "s32": "-24bit", "flt": "-float"}.get(
            self.sample_format or "", ""
        )
        layout = "mono" if self.channels == 1 else "stereo"
        return f"{self.suffix}-{self.encoder}{depth}-{self.rate}-{layout}"


def _grid(
    muxer: str,
    encoder: str,
    suffix: str,
    codec: str,
    rates: Iterable[int],
    *,
    lossless: bool = False,
    formats: Iterable[str | None] = (None,),
) -> list[Variant]:
    return [
        Variant(muxer, encoder, rate, channels, suffix, codec, lossless, fmt)
        for fmt in formats
        for rate in rates
        for channels in (1, 2)
    ]


def _mp3(variants: list[Variant]) -> list[Variant]:
    """LAME's default at 8 kHz is its floor, 8 kbit/s, which nobody records speech at: use
    32 kbit/s per channel up to 24 kHz and 64 kbit/s per channel above, as voice recorders do."""
    return [
        replace(v, bit_rate=(32_000 if v.rate <= 24_000 else 64_000) * v.channels) for v in variants
    ]


def matrix() -> list[Variant]:
    """Every accepted container at every rate its codec supports, mono and stereo.

    Bit rates are the encoders' defaults except for MP3 (see `_mp3`).
    """
    return [
        *_grid("wav", "pcm", "wav", "pcm", RATES, lossless=True, formats=("s16", "s32", "flt")),
        *_grid("flac", "flac", "flac", "flac", RATES, lossless=True),
        *_mp3(_grid("mp3", "libmp3lame", "mp3", "mp3", RATES)),
        # FFmpeg's own Vorbis encoder writes stereo only (and there is no libvorbis in PyAV's
        # wheels); the committed formats/en_01_en-us.ogg is the mono Ogg/Vorbis case.
        *(v for v in _grid("ogg", "vorbis", "ogg", "vorbis", RATES) if v.channels == 2),
        *_grid("ogg", "libopus", "opus", "opus", OPUS_RATES),
        *_grid("ipod", "aac", "m4a", "aac", RATES),
        *_grid("mp4", "aac", "mp4", "aac", RATES),
        *_grid("adts", "aac", "aac", "aac", RATES),
        *_grid("webm", "libopus", "webm", "opus", OPUS_RATES),
        *_grid("mpeg", "mp2", "mpeg", "mp2", MP2_RATES),
        *_mp3(_grid("mpeg", "libmp3lame", "mpeg", "mp3", RATES)),
    ]


_PCM = {"s16": "pcm_s16le", "s32": "pcm_s24le", "flt": "pcm_f32le"}


def resample(samples: Waveform, *, from_rate: int, to_rate: int) -> Waveform:
    """Mono float32 through FFmpeg's resampler, as the decoder's own resampler does it."""
    if from_rate == to_rate:
        return samples.astype(np.float32)
    frame = av.AudioFrame.from_ndarray(
        samples.astype(np.float32).reshape(1, -1), format="flt", layout="mono"
    )
    frame.sample_rate = from_rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=to_rate)
    out = [*resampler.resample(frame), *resampler.resample(None)]
    return np.concatenate([f.to_ndarray().reshape(-1) for f in out]).astype(np.float32)


def encode(variant: Variant, reference: Waveform) -> bytes:
    """Write the 16 kHz reference as `variant`, in memory."""
    signal = resample(reference, from_rate=SAMPLE_RATE, to_rate=variant.rate)
    planes = [signal] if variant.channels == 1 else [signal, signal * RIGHT_GAIN]
    pcm = np.stack(planes).astype(np.float32)
    layout = "mono" if variant.channels == 1 else "stereo"
    encoder = _PCM[variant.sample_format or "s16"] if variant.encoder == "pcm" else variant.encoder
    out = io.BytesIO()
    with av.open(out, mode="w", format=variant.muxer) as container:
        stream = container.add_stream(encoder, rate=variant.rate, layout=layout)
        if variant.encoder == "vorbis":
            stream.codec_context.options = {"strict": "experimental"}
        if variant.sample_format and variant.encoder == "pcm":
            stream.codec_context.format = variant.sample_format
        if variant.bit_rate:
            stream.codec_context.bit_rate = variant.bit_rate
        frame = av.AudioFrame.from_ndarray(pcm, format="fltp", layout=layout)
        frame.sample_rate = variant.rate
        frame.pts = 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


@cache
def fixture_audio(path: Path) -> Waveform:
    return decode_audio(path, max_duration_s=600)


def speech(paths: Iterable[Path], seconds: float, gap_s: float = 0.3) -> Waveform:
    """`seconds` of 16 kHz speech: fixture clips joined with short silences, repeated as needed."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.float32)
    wanted = int(seconds * SAMPLE_RATE)
    clips = [fixture_audio(p) for p in paths]
    parts: list[Waveform] = []
    total = 0
    while total < wanted:
        for clip in clips:
            parts += [clip, gap]
            total += clip.shape[0] + gap.shape[0]
    return np.concatenate(parts)[:wanted]


@dataclass(frozen=True)
class Match:
    correlation: float
    lag: float  # samples (at 16 kHz) the decoded audio is late by; negative: early
    length_error: int  # decoded length minus reference length, in samples


def compare(decoded: Waveform, reference: Waveform, *, max_lag_s: float = 0.25) -> Match:
    """Pearson correlation after aligning on the cross-correlation peak within `max_lag_s`.

    Lossy encoders add a start delay (priming) and padding that not every container records,
    and a delay of whole samples at 44.1 kHz is a fraction of one at 16 kHz: the peak is
    found to 1/32 of a sample (evaluating the band-limited cross-correlation between the
    whole-sample lags), the reference is shifted by it (a phase ramp on its spectrum) and the
    two are compared over their overlap. Lossless variants are expected at lag 0.
    """
    max_lag = int(max_lag_s * SAMPLE_RATE)
    size = 1 << (max(decoded.shape[0], reference.shape[0]) + max_lag).bit_length()
    ref_spectrum = np.fft.rfft(reference.astype(np.float64), size)
    cross = np.fft.rfft(decoded.astype(np.float64), size) * np.conj(ref_spectrum)
    xcorr = np.fft.irfft(cross, size)
    # xcorr[k] = sum decoded[i + k] * reference[i]; negative lags wrap to the end.
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    values = np.concatenate([xcorr[: max_lag + 1], xcorr[size - max_lag :]])
    lag = float(lags[int(np.argmax(values))])
    phase = 2j * np.pi * np.arange(cross.shape[0]) / size
    weights = np.full(cross.shape[0], 2.0)
    weights[[0, -1]] = 1.0

    def xcorr_at(at: float) -> float:  # the inverse real FFT evaluated at a fractional lag
        return float(np.sum(weights * (cross * np.exp(phase * at)).real))

    for step in (1 / 4, 1 / 32):
        lag = max((lag + d * step for d in range(-4, 5)), key=xcorr_at)
    shifted = np.fft.irfft(ref_spectrum * np.exp(-phase * lag), size)
    start = max(0, int(np.ceil(lag)))
    end = min(decoded.shape[0], reference.shape[0] + int(np.floor(lag)))
    correlation = float(np.corrcoef(decoded[start:end], shifted[start:end])[0, 1])
    return Match(correlation, lag, decoded.shape[0] - reference.shape[0])


def spoken(
    clips: Iterable[tuple[Path, str]], seconds: float, gap_s: float = 0.4
) -> tuple[Waveform, str]:
    """Whole clips joined with short silences while they fit in `seconds`, padded to it, and
    the words they speak (for a word error rate against the script)."""
    wanted = int(seconds * SAMPLE_RATE)
    gap = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.float32)
    parts: list[Waveform] = []
    words: list[str] = []
    total = 0
    for path, text in clips:
        audio = fixture_audio(path)
        if total + audio.shape[0] > wanted:
            continue
        parts += [audio, gap]
        words.append(text)
        total += audio.shape[0] + gap.shape[0]
    joined = np.concatenate(parts)[:wanted]
    return np.pad(joined, (0, wanted - joined.shape[0])), " ".join(words)


def encode_flac(samples: Waveform) -> bytes:
    """Write a 16 kHz mono waveform as FLAC (for test and benchmark inputs)."""
    out = io.BytesIO()
    write_flac([samples], out)
    return out.getvalue()


def write_flac(blocks: Iterable[Waveform], target: BinaryIO | str) -> None:
    """Stream 16 kHz mono blocks into a FLAC file (long test inputs never held whole)."""
    with av.open(target, mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        for block in blocks:
            pcm = (np.clip(block, -1.0, 1.0) * 32767).astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
