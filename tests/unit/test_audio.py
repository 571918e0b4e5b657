"""The bounded decoder against real speech, every accepted container and the hostile files."""

import io
import tempfile
import time
import tracemalloc
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import av.logging
import numpy as np
import pytest

from services.core.errors import ServiceError
from services.transcription.audio import (
    _CONTAINER_OPTIONS,
    ACCEPTED_CODECS,
    ACCEPTED_CONTAINERS,
    AudioDecoder,
    decode_audio,
    probe_audio,
    scan_duration_s,
)
from services.transcription.domain import SAMPLE_RATE
from tests import audio_variants
from tests.audio_variants import speech
from tests.conftest import ENGLISH, FIXTURES, FORMATS, HOSTILE, SILENCE, TWO_HOURS


def test_speech_decodes_to_16k_mono_float32_of_the_right_length() -> None:
    clip = ENGLISH[0]
    audio = decode_audio(clip.path, max_duration_s=600)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert audio.shape[0] / SAMPLE_RATE == pytest.approx(clip.duration_s, abs=0.05)
    assert np.abs(audio).max() > 0.05  # real speech, not silence


@pytest.mark.parametrize(("path", "_text"), FORMATS, ids=lambda v: getattr(v, "name", ""))
def test_every_accepted_container_decodes(path: object, _text: str) -> None:
    audio = decode_audio(path, max_duration_s=600)  # type: ignore[arg-type]
    assert 3.0 < audio.shape[0] / SAMPLE_RATE < 3.5


@pytest.mark.parametrize(
    ("path", "status"), sorted(HOSTILE.items()), ids=lambda v: getattr(v, "name", "")
)
def test_hostile_files_get_their_status_and_a_clear_message(path: object, status: int) -> None:
    with pytest.raises(ServiceError) as caught:
        decode_audio(path, max_duration_s=600)  # type: ignore[arg-type]
    assert caught.value.status_code == status
    assert caught.value.param == "file"
    assert len(caught.value.message) > 20


def test_truncation_is_named_as_such() -> None:
    for name in ("truncated.flac", "truncated.wav"):
        path = next(p for p in HOSTILE if p.name == name)
        with pytest.raises(ServiceError, match="truncated"):
            decode_audio(path, max_duration_s=600)


def test_two_hours_of_silence_is_refused_fast_with_bounded_memory() -> None:
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ServiceError) as caught:
        decode_audio(TWO_HOURS, max_duration_s=600)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert caught.value.status_code == 413
    assert elapsed < 5
    # 600 s of float32 is 38 MB; the whole two hours would be 460 MB.
    assert peak < 120 * 1024 * 1024


def test_silence_is_valid_audio() -> None:
    audio = decode_audio(SILENCE, max_duration_s=600)
    assert audio.shape[0] == 5 * SAMPLE_RATE


def test_probe_reads_only_the_header() -> None:
    info = probe_audio(TWO_HOURS.read_bytes())
    assert info.container == "flac"
    assert info.declared_duration_s == pytest.approx(7200)


def test_blocks_stream_in_fixed_sizes() -> None:
    clip = max(ENGLISH, key=lambda c: c.duration_s)
    with AudioDecoder(io.BytesIO(clip.path.read_bytes())) as decoder:
        blocks = list(decoder.blocks(max_duration_s=600, block_s=2.0))
    assert all(b.shape[0] == 2 * SAMPLE_RATE for b in blocks[:-1])
    assert 0 < blocks[-1].shape[0] <= 2 * SAMPLE_RATE


def _wav_s16(samples: np.ndarray) -> bytes:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLE_RATE)
        writer.writeframes(pcm.tobytes())
    return out.getvalue()


def test_a_long_wav_decodes_sample_exact_from_bytes_spooled_and_stored_files(
    tmp_path: Path,
) -> None:
    # 20 s: far past the 65,536 samples after which a moved file position used to show.
    audio = speech([c.path for c in ENGLISH[:4]], 20.0)
    data = _wav_s16(audio)
    expected = np.frombuffer(data[44:], dtype="<i2").astype(np.float32) / 32768
    stored = tmp_path / "upload"
    stored.write_bytes(data)
    decoded = {"bytes": decode_audio(data, max_duration_s=600)}
    # What the sync path gets: the multipart upload's SpooledTemporaryFile, on disk or not.
    for name, max_size in (("spooled on disk", 1024 * 1024), ("spooled in memory", len(data) + 1)):
        with tempfile.SpooledTemporaryFile(max_size=max_size) as upload:
            upload.write(data)
            upload.seek(0)
            decoded[name] = decode_audio(upload, max_duration_s=600)  # type: ignore[arg-type]
    with stored.open("rb") as job_file:  # the jobs path probes, rewinds, then decodes
        probe_audio(job_file)
        job_file.seek(0)
        with AudioDecoder(job_file) as decoder:
            blocks = list(decoder.blocks(max_duration_s=600, block_s=7.0))
        decoded["stored file"] = np.concatenate(blocks)
    for path, samples in decoded.items():
        assert samples.shape == expected.shape, path
        wrong = np.count_nonzero(samples != expected)
        assert wrong == 0, f"{path}: {wrong} of {expected.size} samples differ"


# A playlist, a concat list and an RTP session all name other resources for FFmpeg to open;
# an image is a demuxer we have no use for. Each would be recognised by FFmpeg's content probe
# (helped by its file name when it has one), so the allow-list must refuse it before the
# demuxer parses anything. A plain concat list is not recognised at all: 400.
_HLS = b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\nsegment0.ts\n#EXT-X-ENDLIST\n"
_FOREIGN = {
    "playlist.m3u8": (_HLS, 415),
    "list.ffconcat": (b"ffconcat version 1.0\nfile 'clip.flac'\n", 415),
    "list.txt": (b"file 'clip.flac'\n", 400),
    "session.sdp": (
        b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\n"
        b"m=audio 5004 RTP/AVP 97\na=rtpmap:97 opus/48000/2\n",
        415,
    ),
    "image.mp3": ((FIXTURES / "hostile" / "image.mp3").read_bytes(), 415),
}


@contextmanager
def _ffmpeg_log() -> Iterator[list[tuple[int, str, str]]]:
    """FFmpeg's own log lines from this thread (PyAV keeps them off by default)."""
    level, skip = av.logging.get_level(), av.logging.get_skip_repeated()
    av.logging.set_level(av.logging.VERBOSE)
    av.logging.set_skip_repeated(False)
    try:
        with av.logging.Capture(local=True) as logs:
            yield logs
    finally:
        av.logging.set_level(level)
        av.logging.set_skip_repeated(skip)


@pytest.mark.parametrize("name", sorted(_FOREIGN))
def test_playlists_concat_lists_and_images_are_refused_before_they_are_parsed(
    name: str, tmp_path: Path
) -> None:
    data, status = _FOREIGN[name]
    # What a parse would go on to open, right next to it.
    (tmp_path / "clip.flac").write_bytes(ENGLISH[0].path.read_bytes())
    (tmp_path / "segment0.ts").write_bytes(b"\x47" * 188)
    named = tmp_path / name
    named.write_bytes(data)
    for source in (named, data):  # a stored file with a telling name, and bare bytes
        with _ffmpeg_log() as logs, pytest.raises(ServiceError) as caught:
            probe_audio(source)  # type: ignore[arg-type]
        lines = [message for _, _, message in logs]
        if source is named:
            assert caught.value.status_code == status
        else:  # without a name an HLS playlist is not even recognised
            assert caught.value.status_code in (400, 415)
        if caught.value.status_code == 415:
            assert any("not on whitelist" in line for line in lines), lines
        # Nothing was parsed far enough to try opening what the file names.
        assert not any("Opening" in line or "Protocol" in line for line in lines), lines


def _video_only_mp4() -> bytes:
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for index in range(10):
            image = np.full((64, 64, 3), index * 20, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


def _ac3_in_matroska() -> bytes:
    out = io.BytesIO()
    with av.open(out, mode="w", format="matroska") as container:
        stream = container.add_stream("ac3", rate=48000, layout="stereo")
        tone = np.sin(np.arange(48000, dtype=np.float32) / 10)
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate = 48000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


def test_an_accepted_container_without_audio_is_415() -> None:
    with pytest.raises(ServiceError, match="no audio stream") as caught:
        probe_audio(_video_only_mp4())
    assert caught.value.status_code == 415


def test_an_audio_codec_off_the_allow_list_is_415_before_it_is_decoded() -> None:
    data = _ac3_in_matroska()
    with pytest.raises(ServiceError, match="ac3") as caught:
        decode_audio(data, max_duration_s=60)
    assert caught.value.status_code == 415
    with av.open(io.BytesIO(data)) as container:  # it is a good file, only not one we take
        assert container.streams.audio[0].codec_context.name == "ac3"


def test_the_allow_lists_name_only_the_accepted_containers() -> None:
    assert _CONTAINER_OPTIONS["protocol_whitelist"] == "none"
    allowed = set(_CONTAINER_OPTIONS["format_whitelist"].split(","))
    assert allowed == {name for names in ACCEPTED_CONTAINERS for name in names.split(",")}
    assert set(_CONTAINER_OPTIONS["codec_whitelist"].split(",")) == ACCEPTED_CODECS


def test_a_video_track_is_never_decoded() -> None:
    """FFmpeg decodes a few frames of every stream while probing; the decoder allow-list keeps
    the video decoder of an mp4 closed, and its audio still decodes."""
    mp4 = next(path for path, _ in FORMATS if path.suffix == ".mp4")
    with _ffmpeg_log() as logs:
        audio = decode_audio(mp4, max_duration_s=60)
    assert any("(h264) not on whitelist" in message for _, _, message in logs)
    assert audio.shape[0] > 3 * SAMPLE_RATE


@pytest.mark.parametrize(
    "variant",
    [
        audio_variants.Variant("ogg", "libopus", 48000, 1, "ogg", "opus"),
        audio_variants.Variant("flac", "flac", 16000, 1, "flac", "flac", lossless=True),
    ],
    ids=lambda v: v.id,
)
def test_a_packet_scan_measures_a_file_that_declares_no_length(
    variant: audio_variants.Variant,
) -> None:
    """Jobs take `progress.total` from this when the container declares no duration."""
    reference = audio_variants.speech([c.path for c in ENGLISH[:3]], 20.0)
    data = audio_variants.encode(variant, reference)
    scanned = scan_duration_s(data)
    assert scanned is not None
    assert abs(scanned - 20.0) < 0.1
    assert scan_duration_s(io.BytesIO(data)) == scanned
