"""Every accepted container, codec, rate and layout decodes to the waveform it carries.

The variants are encoded at test time from a committed fixture (tests/audio_variants.py) and
decoded through both ways an upload reaches the decoder: the sync path (bytes, or the
SpooledTemporaryFile a multipart upload is parsed into) and the jobs path (a stored file
opened from disk, probed, rewound, then decoded in blocks).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from services.transcription.audio import (
    ACCEPTED_CODECS,
    ACCEPTED_CONTAINERS,
    AudioDecoder,
    decode_audio,
    probe_audio,
)
from services.transcription.domain import SAMPLE_RATE, TranscriptionOptions, Waveform
from services.transcription.engine import WhisperEngine
from tests.audio_variants import (
    Variant,
    compare,
    encode,
    encode_flac,
    fixture_audio,
    matrix,
    resample,
    speech,
    spoken,
)
from tests.conftest import ENGLISH, FIXTURES, FORMATS, MANIFEST, report, word_error_rate

VARIANTS = matrix()
SOURCE = ENGLISH[1].path  # 5.3 s of speech
# Correlation with the reference after alignment. Lossless codecs must reproduce it; the lossy
# bounds sit below the worst value measured on this machine's encoders (in the report) with a
# margin, and far above what a wrong decode gives (the old WAV bug: about 0.5).
BOUNDS = {
    "pcm": 0.999,
    "flac": 0.999,
    "mp3": 0.98,  # worst measured 0.9919 (22.05 kHz mono, 32 kbit/s)
    "vorbis": 0.985,  # worst 0.9942 (8 kHz)
    "opus": 0.995,  # worst 0.9984 (48 kHz mono)
    "aac": 0.99,  # worst 0.9972 (8 kHz mono)
    "mp2": 0.99,  # worst 0.9980 (16 kHz stereo)
}
# Lossy streams may start late by their encoder's priming where the container does not record
# it (raw AAC, MPEG-PS) and end with padding; never by more than this.
MAX_LOSSY_OFFSET_S = 0.25
COMMITTED_BOUND = 0.95
SPOOL_MAX_BYTES = 256 * 1024  # some variants stay in memory, the larger roll over to disk

_worst: dict[str, tuple[float, str]] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_figures() -> Iterator[None]:
    yield
    if _worst:
        report(f"audio matrix: {len(VARIANTS)} generated variants, each decoded from bytes, "
               "a spooled upload and a stored file")  # fmt: skip
        for codec, (value, name) in sorted(_worst.items()):
            report(
                f"  {codec:6s} worst correlation {value:.6f} (1 - {1 - value:.1e}, {name}); "
                f"bound {BOUNDS[codec]}"
            )


def _note(codec: str, value: float, name: str) -> None:
    if codec not in _worst or value < _worst[codec][0]:
        _worst[codec] = (value, name)


@pytest.fixture(scope="module")
def reference() -> Waveform:
    return fixture_audio(SOURCE)


@pytest.fixture(scope="module")
def encoded(reference: Waveform) -> Callable[[Variant], bytes]:
    """Each variant's file, encoded once for the module."""
    cache: dict[Variant, bytes] = {}

    def get(variant: Variant) -> bytes:
        if variant not in cache:
            cache[variant] = encode(variant, reference)
        return cache[variant]

    return get


@pytest.fixture(scope="module")
def expected(reference: Waveform) -> Callable[[int], Waveform]:
    """The reference through the same rate conversion as a variant: 16 kHz -> rate -> 16 kHz."""
    cache: dict[int, Waveform] = {}

    def get(rate: int) -> Waveform:
        if rate not in cache:
            there = resample(reference, from_rate=SAMPLE_RATE, to_rate=rate)
            cache[rate] = resample(there, from_rate=rate, to_rate=SAMPLE_RATE)
        return cache[rate]

    return get


def _check(variant: Variant, decoded: Waveform, expected: Waveform, path: str) -> None:
    assert decoded.dtype == np.float32
    bound = BOUNDS[variant.codec]
    if variant.lossless:
        # Same samples at the same place: no alignment, no length slack.
        assert decoded.shape == expected.shape, path
        correlation = float(np.corrcoef(decoded, expected)[0, 1])
    else:
        match = compare(decoded, expected, max_lag_s=MAX_LOSSY_OFFSET_S)
        assert abs(match.length_error) <= MAX_LOSSY_OFFSET_S * SAMPLE_RATE, (path, match)
        correlation = match.correlation
    _note(variant.codec, correlation, variant.id)
    assert correlation >= bound, f"{variant.id} via {path}: correlation {correlation:.5f}"


def test_the_matrix_covers_every_accepted_container(
    encoded: Callable[[Variant], bytes],
) -> None:
    seen = {probe_audio(encoded(variant)).container for variant in VARIANTS}
    assert seen == ACCEPTED_CONTAINERS


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_sync_path_decodes_the_variant(
    variant: Variant,
    encoded: Callable[[Variant], bytes],
    expected: Callable[[int], Waveform],
) -> None:
    data = encoded(variant)
    from_bytes = decode_audio(data, max_duration_s=60)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES) as upload:
        upload.write(data)
        upload.seek(0)
        from_upload = decode_audio(upload, max_duration_s=60)  # type: ignore[arg-type]
    assert np.array_equal(from_bytes, from_upload)
    _check(variant, from_bytes, expected(variant.rate), "bytes")


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_jobs_path_decodes_the_variant(
    variant: Variant,
    encoded: Callable[[Variant], bytes],
    expected: Callable[[int], Waveform],
    tmp_path: Path,
) -> None:
    stored = tmp_path / "0123abcd"  # stored audio has no extension to guess from
    stored.write_bytes(encoded(variant))
    with stored.open("rb") as file:
        info = probe_audio(file)
        file.seek(0)  # as JobsService.submit does before storing
        with AudioDecoder(file) as decoder:
            blocks = list(decoder.blocks(max_duration_s=60, block_s=2.0))
    assert info.container in ACCEPTED_CONTAINERS
    assert info.codec in ACCEPTED_CODECS
    _check(variant, np.concatenate(blocks), expected(variant.rate), "stored file")


@pytest.mark.parametrize(("path", "_text"), FORMATS, ids=lambda v: getattr(v, "name", ""))
def test_committed_format_fixtures_match_their_source(path: Path, _text: str) -> None:
    """Files made once by scripts/make_fixtures.py, among them the only mono Ogg/Vorbis here
    (FFmpeg's Vorbis encoder writes stereo only). Their AAC is 48 kbit/s mono and their Opus
    32 kbit/s, below the matrix's encoder defaults, hence one looser bound (measured worst:
    0.967, the AAC ones)."""
    meta = next(f for f in MANIFEST["formats"] if FIXTURES / f["file"] == path)
    source = fixture_audio(FIXTURES / meta["source"])
    rate = meta["sample_rate"]
    there = resample(source, from_rate=SAMPLE_RATE, to_rate=rate)
    match = compare(
        decode_audio(path, max_duration_s=60), resample(there, from_rate=rate, to_rate=SAMPLE_RATE)
    )
    report(f"committed {path.name}: correlation {match.correlation:.4f}")
    assert match.correlation >= COMMITTED_BOUND, match


# -- five minutes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def five_minutes() -> Waveform:
    return speech([c.path for c in ENGLISH], 300.0)


def _stored_decode(data: bytes, tmp_path: Path) -> Waveform:
    stored = tmp_path / "five-minutes"
    stored.write_bytes(data)
    with stored.open("rb") as file:
        probe_audio(file)
        file.seek(0)
        with AudioDecoder(file) as decoder:
            return np.concatenate(list(decoder.blocks(max_duration_s=600, block_s=30.0)))


@pytest.mark.parametrize("muxer", ["wav", "flac"])
def test_five_minutes_decode_sample_exact(
    muxer: str, five_minutes: Waveform, tmp_path: Path
) -> None:
    pcm = (np.clip(five_minutes, -1.0, 1.0) * 32767).astype(np.int16)
    exact = pcm.astype(np.float32) / 32768
    if muxer == "flac":
        data = encode_flac(five_minutes)
    else:
        data = encode(Variant("wav", "pcm", SAMPLE_RATE, 1, "wav", "pcm", True, "s16"), exact)
    for path, decoded in (
        ("bytes", decode_audio(data, max_duration_s=600)),
        ("stored file", _stored_decode(data, tmp_path)),
    ):
        assert decoded.shape == exact.shape, path
        wrong = int(np.count_nonzero(decoded != exact))
        assert wrong == 0, f"{muxer} via {path}: {wrong} of {exact.size} samples differ"
    report(f"5 min {muxer} 16 kHz mono 16-bit: {exact.size} samples, sample-exact from bytes "
           "and from a stored file")  # fmt: skip


@pytest.mark.parametrize(
    "variant",
    [
        Variant("wav", "pcm", 44100, 2, "wav", "pcm", True, "s32"),
        Variant("flac", "flac", 48000, 2, "flac", "flac", True),
    ],
    ids=lambda v: v.id,
)
def test_five_minutes_at_a_high_rate_decode_whole(
    variant: Variant, five_minutes: Waveform, tmp_path: Path
) -> None:
    data = encode(variant, five_minutes)
    there = resample(five_minutes, from_rate=SAMPLE_RATE, to_rate=variant.rate)
    target = resample(there, from_rate=variant.rate, to_rate=SAMPLE_RATE)
    decoded = _stored_decode(data, tmp_path)
    assert decoded.shape == target.shape  # 300 s to the sample
    correlation = float(np.corrcoef(decoded, target)[0, 1])
    # Per 30 s stretch too, so a wrong tail cannot hide in a good whole.
    stretches = [
        float(
            np.corrcoef(decoded[i : i + 30 * SAMPLE_RATE], target[i : i + 30 * SAMPLE_RATE])[0, 1]
        )
        for i in range(0, decoded.shape[0], 30 * SAMPLE_RATE)
    ]
    report(f"5 min {variant.id}: {len(data) / 1e6:.0f} MB, correlation {correlation:.6f}, "
           f"worst 30 s stretch {min(stretches):.6f}")  # fmt: skip
    assert min(stretches) >= 0.999


# -- transcripts -----------------------------------------------------------------------------

# What an upload of each lossy codec typically is: a 128 kbit/s MP3, a Vorbis file, a browser
# recording (WebM/Opus), a phone voice memo (m4a/AAC) and an MPEG-PS file's MP2 track.
LOSSY_30S = [
    Variant("mp3", "libmp3lame", 44100, 2, "mp3", "mp3", bit_rate=128_000),
    Variant("ogg", "vorbis", 44100, 2, "ogg", "vorbis"),
    Variant("webm", "libopus", 48000, 1, "webm", "opus"),
    Variant("ipod", "aac", 48000, 1, "m4a", "aac"),
    Variant("mpeg", "mp2", 48000, 2, "mpeg", "mp2"),
]
MAX_WER_AGAINST_FLAC = 0.05


@pytest.fixture(scope="module")
def thirty_seconds() -> tuple[Waveform, str]:
    """30 s of 10 clips (73 words) with 1 s gaps. tiny.en is chaotic on a full window: on
    other 30 s joins of the fixtures a codec's inaudible change (or none: the FLAC itself) made
    it drop a whole sentence, WER 0.2-0.3 either way, so the join used is one whose FLAC
    transcript is right (WER 0.068 against the script): only then does "as good as the FLAC"
    say something about the decoder."""
    return spoken([(c.path, c.text) for c in ENGLISH[5:]], 30.0, gap_s=1.0)


@pytest.fixture(scope="module")
def flac_transcript(tiny_engine: WhisperEngine, thirty_seconds: tuple[Waveform, str]) -> str:
    audio, script = thirty_seconds
    decoded = decode_audio(encode_flac(audio), max_duration_s=60)
    text = tiny_engine.transcribe(decoded, TranscriptionOptions()).text
    report(f"30 s FLAC original: WER {word_error_rate(script, text):.3f} against the script")
    return text


@pytest.mark.parametrize("variant", LOSSY_30S, ids=lambda v: v.id)
def test_thirty_seconds_of_lossy_audio_transcribe_like_the_flac_original(
    variant: Variant,
    tiny_engine: WhisperEngine,
    thirty_seconds: tuple[Waveform, str],
    flac_transcript: str,
) -> None:
    audio, script = thirty_seconds
    decoded = decode_audio(encode(variant, audio), max_duration_s=60)
    assert decoded.shape[0] / SAMPLE_RATE == pytest.approx(30.0, abs=MAX_LOSSY_OFFSET_S)
    text = tiny_engine.transcribe(decoded, TranscriptionOptions()).text
    against_flac = word_error_rate(flac_transcript, text)
    report(f"30 s {variant.id}: WER {against_flac:.3f} against the FLAC transcript, "
           f"{word_error_rate(script, text):.3f} against the script")  # fmt: skip
    assert against_flac <= MAX_WER_AGAINST_FLAC
