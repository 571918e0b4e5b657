"""Decoding untrusted audio into 16 kHz mono float32, with PyAV and bounded memory.

Why not `faster_whisper.decode_audio`: it decodes the whole file before anyone can check
its length, hides truncation, and raises bare `IndexError`s on some inputs. Here the
decoder streams, counts decoded samples (container metadata is attacker-controlled) and
stops as soon as the cap is passed, so a 200 kB FLAC of two hours of silence is refused
after a few milliseconds and a few MB.

The mapping of failures (each an error class with its HTTP status):
empty file, undecodable/corrupt stream, truncated file, zero samples -> 400;
a container we do not accept, one with no audio stream, or audio in a codec we do not
accept -> 415;
longer than the cap -> 413.

FFmpeg owns the file position. PyAV reads through the file object it is given and does not
seek back before each read, so once `av.open` has run nothing here may read, seek or tell on
that object (a WAV size check that seeked to the end and back made FFmpeg read on from the
wrong place: a 16 kHz 16-bit mono WAV decoded right for its first 65,536 samples only, a
44.1 kHz 24-bit stereo one hardly at all). Everything the decoder needs
from the raw bytes (the RIFF header, the file size) is taken before FFmpeg is given the file.

FFmpeg is opened with allow-lists: only the demuxers of the accepted containers may be picked
(checked after FFmpeg's content probe and before the demuxer parses anything, so playlists,
concat lists, SDP sessions and images are refused unread), only the decoders of the accepted
audio codecs may be opened (FFmpeg decodes a few frames of every stream while probing: a
video track's decoder stays closed), and no protocol may be opened at all (the upload is a
Python file object, so a nested open could only be a reference the file makes elsewhere).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import av.error
import numpy as np

from services.core.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from services.core.logging import get_logger
from services.transcription.domain import SAMPLE_RATE, Waveform
from services.transcription.wav_header import head_and_size, wav_data

log = get_logger(__name__)

# FFmpeg demuxer names (as `container.format.name` reports them) for what OpenAI accepts: flac,
# mp3, mp4, mpeg, mpga, m4a, ogg, wav, webm, plus raw AAC (ADTS), which some recorders write
# as .aac or .m4a. Video containers are fine as long as they carry an audio track. "mpeg" is
# MPEG-PS (.mpeg/.mpg); MPEG-TS is not on the list (OpenAI does not take it either).
ACCEPTED_CONTAINERS = frozenset(
    {
        "wav",
        "flac",
        "mp3",
        "ogg",
        "mov,mp4,m4a,3gp,3g2,mj2",
        "matroska,webm",
        "mpeg",
        "aac",
    }
)
# FFmpeg decoder names for the audio those containers carry; anything else is refused with 415
# before a decoder for it is opened.
ACCEPTED_CODECS = frozenset(
    {
        *(f"pcm_{fmt}" for fmt in ("u8", "s8", "alaw", "mulaw")),
        *(f"pcm_{fmt}{end}" for fmt in ("s16", "s24", "s32", "f32", "f64") for end in ("le", "be")),
        "flac",
        "alac",
        *("mp1", "mp1float", "mp2", "mp2float", "mp3", "mp3float"),
        "aac",
        "aac_fixed",
        "vorbis",
        "opus",
        "libopus",
    }
)
DECODER_VERSION = "2"
"""Bumped whenever decoding changes what samples come out: it is part of the result cache key,
so a fixed decoder never serves a transcript a broken one computed (2: WAV position fix)."""
# A decoded length this much shorter than the declared one means the upload was cut off.
TRUNCATION_RATIO = 0.9
TRUNCATION_MIN_MISSING_S = 0.5


def _comma_list(names: frozenset[str]) -> str:
    # FFmpeg matches each comma-separated element of a demuxer's name ("matroska,webm")
    # against each element of the list, so the multi-name demuxers can be joined as they are.
    return ",".join(sorted(names))


_CONTAINER_OPTIONS = {
    "format_whitelist": _comma_list(ACCEPTED_CONTAINERS),
    "codec_whitelist": _comma_list(ACCEPTED_CODECS),
    # No protocol at all: the upload itself is a Python file object and needs none, and
    # nested resources (playlists, concat lists, external references) must never be opened.
    "protocol_whitelist": "none",
}
_EXPECTED = "flac, mp3, mp4, mpeg, mpga, m4a, ogg, wav or webm"


class EmptyAudioError(InvalidRequestError):
    default_code = "empty_file"


class UndecodableAudioError(InvalidRequestError):
    default_code = "invalid_audio"


class TruncatedAudioError(InvalidRequestError):
    default_code = "truncated_audio"


class NoAudioStreamError(UnsupportedMediaTypeError):
    default_code = "unsupported_media"


class AudioTooLongError(PayloadTooLargeError):
    default_code = "audio_too_long"


class FileTooLargeError(PayloadTooLargeError):
    default_code = "file_too_large"


AudioSource = bytes | Path | BinaryIO


@dataclass(frozen=True)
class AudioInfo:
    """What the container says about itself; `declared_duration_s` is a claim, not a fact."""

    container: str
    codec: str
    declared_duration_s: float | None


def _as_file(source: AudioSource) -> BinaryIO:
    if isinstance(source, bytes):
        return io.BytesIO(source)
    if isinstance(source, Path):
        return source.open("rb")
    return source


class AudioDecoder:
    """One opened upload: probe it, then stream its samples with a hard duration cap.

    Use as a context manager; `info` is available right after opening, which is all a
    cheap probe needs. `blocks()` yields float32 blocks of `block_s` seconds.
    """

    def __init__(self, source: AudioSource) -> None:
        self._owns_file = isinstance(source, bytes | Path)
        self._file = _as_file(source)
        try:
            head, file_size = head_and_size(self._file)
        except BaseException:
            self._close_file()
            raise
        if not head:
            self._close_file()
            raise EmptyAudioError("The audio file is empty.", param="file")
        wav = wav_data(head)
        # From here on the file position is FFmpeg's: nothing below touches self._file.
        self._container = self._open_container()
        container = self._container.format.name
        if not self._container.streams.audio:
            self.close()
            raise NoAudioStreamError(
                f"The file has no audio track we can read ({container} with no audio stream); "
                f"expected one of {_EXPECTED} with an audio stream.",
                param="file",
            )
        self._stream = self._container.streams.audio[0]
        codec = self._stream.codec_context.name if self._stream.codec_context else "unknown"
        if codec not in ACCEPTED_CODECS:
            self.close()
            raise NoAudioStreamError(
                f"The audio track is {codec}, a codec we do not accept; expected PCM, FLAC, "
                "ALAC, MP3/MP2, AAC, Vorbis or Opus audio.",
                param="file",
            )
        if container != "wav":
            wav = None
        declared = wav.duration_s if wav else None
        if declared is None and container != "wav" and self._container.duration:
            declared = self._container.duration / av.time_base
        self._wav_bytes_missing = max(0, wav.offset + wav.size - file_size) if wav else 0
        self.info = AudioInfo(container=container, codec=codec, declared_duration_s=declared)

    def _open_container(self) -> av.container.InputContainer:
        try:
            return av.open(self._file, mode="r", container_options=_CONTAINER_OPTIONS)
        except av.error.ArgumentError as exc:
            # EINVAL from avformat_open_input: FFmpeg recognised the content as a format that
            # is not on the demuxer allow-list (an image, a playlist, a concat list...).
            self._close_file()
            raise NoAudioStreamError(
                f"The file is not in a container we accept; expected one of {_EXPECTED}.",
                param="file",
            ) from exc
        except Exception as exc:  # FFmpeg raises many types on hostile input; all mean "not audio"
            self._close_file()
            raise UndecodableAudioError(
                f"The file could not be decoded as audio; expected one of {_EXPECTED}.",
                param="file",
            ) from exc

    def __enter__(self) -> AudioDecoder:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()
        self._close_file()

    def _close_file(self) -> None:
        if self._owns_file:
            self._file.close()

    def check_first_samples(self, max_packets: int = 64) -> None:
        """Raise the 400 that full decoding would, when the start already shows it."""
        if self._wav_bytes_missing:
            declared = self.info.declared_duration_s or 0.0
            raise TruncatedAudioError(
                f"The file is truncated: its header declares {declared:.2f} s of audio but "
                f"{self._wav_bytes_missing} bytes of it are missing.",
                param="file",
            )
        try:
            # demux() ends with an empty packet per stream, whose decode() flushes the decoder,
            # so a file short enough to end inside the decoder's delay still shows its samples.
            for count, packet in enumerate(self._container.demux(self._stream)):
                if any(frame.samples for frame in packet.decode()):
                    return
                if count >= max_packets:
                    return  # a slow start is not a reason to refuse
        except (av.error.FFmpegError, ValueError, IndexError, EOFError) as exc:
            raise UndecodableAudioError(
                f"The audio stream is corrupt and could not be decoded ({type(exc).__name__}).",
                param="file",
            ) from exc
        raise UndecodableAudioError(
            "The file decodes to no audio samples.", param="file", code="no_audio_samples"
        )

    def packet_duration_s(self) -> float | None:
        """The end of the last packet, read without decoding (see `scan_duration_s`)."""
        if self._stream.time_base is None:
            return None
        end = 0
        for packet in self._container.demux(self._stream):
            if packet.pts is not None and packet.duration is not None:
                end = max(end, packet.pts + packet.duration)
        return float(end * self._stream.time_base) or None

    def blocks(self, *, max_duration_s: float, block_s: float = 30.0) -> Iterator[Waveform]:
        """Yield the decoded audio in blocks, refusing it once it passes `max_duration_s`.

        Raises the 400/413 errors of the module docstring; after the last block it checks
        the decoded length against the declared one.
        """
        max_samples = int(max_duration_s * SAMPLE_RATE)
        block_samples = max(1, int(block_s * SAMPLE_RATE))
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        pending: list[Waveform] = []
        pending_samples = 0
        total = 0
        try:
            for frame in self._decoded_frames(resampler):
                samples = frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                total += samples.shape[0]
                if total > max_samples:
                    raise AudioTooLongError(
                        f"The audio is longer than the {max_duration_s:g} s this endpoint accepts.",
                        param="file",
                    )
                pending.append(samples)
                pending_samples += samples.shape[0]
                while pending_samples >= block_samples:
                    joined = np.concatenate(pending)
                    yield joined[:block_samples]
                    rest = joined[block_samples:]
                    pending, pending_samples = ([rest], rest.shape[0]) if rest.size else ([], 0)
        except (av.error.FFmpegError, ValueError, IndexError, EOFError) as exc:
            declared = self.info.declared_duration_s
            if total and declared and declared > total / SAMPLE_RATE:
                raise TruncatedAudioError(
                    f"The file is truncated: it declares {declared:.2f} s of audio but the "
                    f"stream breaks off after {total / SAMPLE_RATE:.2f} s.",
                    param="file",
                ) from exc
            raise UndecodableAudioError(
                f"The audio stream is corrupt and could not be decoded ({type(exc).__name__}).",
                param="file",
            ) from exc
        if pending_samples:
            yield np.concatenate(pending)
        self._check_complete(total)

    def _decoded_frames(self, resampler: av.AudioResampler) -> Iterator[av.AudioFrame]:
        for packet in self._container.demux(self._stream):
            for frame in packet.decode():
                yield from resampler.resample(frame)
        yield from resampler.resample(None)

    def _check_complete(self, total_samples: int) -> None:
        decoded_s = total_samples / SAMPLE_RATE
        if total_samples == 0:
            raise UndecodableAudioError(
                "The file decodes to no audio samples.", param="file", code="no_audio_samples"
            )
        declared = self.info.declared_duration_s
        if (
            declared is not None
            and decoded_s < declared * TRUNCATION_RATIO
            and declared - decoded_s > TRUNCATION_MIN_MISSING_S
        ):
            raise TruncatedAudioError(
                f"The file is truncated: it declares {declared:.2f} s of audio but only "
                f"{decoded_s:.2f} s could be decoded.",
                param="file",
            )


def probe_audio(source: AudioSource) -> AudioInfo:
    """Refuse cheaply what decoding would refuse: open the upload, check what its header
    claims against its size, and decode up to its first samples (a few packets at most).

    Leaves a file-like source open; the caller rewinds it.
    """
    with AudioDecoder(source) as decoder:
        decoder.check_first_samples()
        return decoder.info


def decode_audio(source: AudioSource, *, max_duration_s: float) -> Waveform:
    """Decode a whole upload (at most `max_duration_s`) into one 16 kHz mono float32 array."""
    with AudioDecoder(source) as decoder:
        blocks = list(decoder.blocks(max_duration_s=max_duration_s))
    return np.concatenate(blocks)


def scan_duration_s(source: AudioSource) -> float | None:
    """The audio's length from a pass over its packets, without decoding them.

    For containers that declare no duration (Ogg, WebM from a browser recorder): it reads
    the whole file but decodes nothing, so a long recording takes a fraction of a second.
    None when the packets carry no timing either.
    """
    with AudioDecoder(source) as decoder:
        return decoder.packet_duration_s()
