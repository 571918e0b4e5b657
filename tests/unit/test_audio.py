"""The bounded decoder against real speech, every accepted container and the hostile files."""

import io
import tempfile
import time
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest

from services.core.errors import ServiceError
from services.transcription.audio import AudioDecoder, decode_audio, probe_audio
from services.transcription.models import SAMPLE_RATE
from tests.audio_variants import speech
from tests.conftest import ENGLISH, FORMATS, HOSTILE, SILENCE, TWO_HOURS


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
    spooled = tempfile.SpooledTemporaryFile(max_size=1024 * 1024)  # rolls over to disk
    spooled.write(data)
    spooled.seek(0)
    in_memory = tempfile.SpooledTemporaryFile(max_size=len(data) + 1)
    in_memory.write(data)
    in_memory.seek(0)
    with stored.open("rb") as job_file, spooled, in_memory:
        probe_audio(job_file)  # the jobs path probes, rewinds, then decodes
        job_file.seek(0)
        with AudioDecoder(job_file) as decoder:
            from_job = np.concatenate(list(decoder.blocks(max_duration_s=600, block_s=7.0)))
        decoded = {
            "bytes": decode_audio(data, max_duration_s=600),
            "spooled on disk": decode_audio(spooled, max_duration_s=600),  # type: ignore[arg-type]
            "spooled in memory": decode_audio(in_memory, max_duration_s=600),  # type: ignore[arg-type]
            "stored file": from_job,
        }
    for path, samples in decoded.items():
        assert samples.shape == expected.shape, path
        wrong = np.count_nonzero(samples != expected)
        assert wrong == 0, f"{path}: {wrong} of {expected.size} samples differ"
