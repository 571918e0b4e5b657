"""Regenerate the committed audio test fixtures under ``tests/fixtures/``.

Run it from the repository root with the project's virtualenv::

    .venv/bin/python scripts/make_fixtures.py

It needs the Debian packages ``espeak-ng`` (speech synthesis) and ``sox``
(resampling, FLAC/WAV/Ogg Vorbis encoding) on the PATH, plus ``numpy`` and
``av`` (PyAV) from the virtualenv for the MP3/M4A/WebM/MP4 files and for
measuring durations.  The test suite itself never calls any of these tools:
everything this script writes is committed, so tests need no apt packages.

What it writes (all paths relative to ``tests/fixtures/``):

* ``en_NN_<voice>.flac`` - English speech, 16 kHz mono FLAC, known script.
  Four short clips are marked ``"distinct": true`` in the manifest; their
  vocabularies share no word at all, so a word from one of them showing up in
  another caller's transcript proves cross-talk between requests.
* ``de_NN_*.flac``, ``fr_NN_*.flac``, ``es_NN_*.flac`` - non-English speech
  that the multilingual Whisper "base" model identifies as the right language
  (the sentences were chosen by trying candidates against that model; the
  probabilities it reported are recorded in the manifest).
* ``silence_5s.flac`` - five seconds of digital silence.
* ``hostile/*`` - inputs a server must reject, with the HTTP status expected.
* ``formats/*`` - the shortest English clip in other containers and codecs.
* ``manifest.json`` - describes all of the above.

The output is deterministic (fixed seeds, ``sox -R``, bit-exact muxing) for a
given set of tool versions (it was generated with espeak-ng 1.51, SoX 14.4.2
and PyAV 18.1; other versions may change the bytes, not the content), and
the script is idempotent: rerunning it overwrites every file, and files that
an earlier run listed in the manifest but this run no longer produces are
removed.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.container import OutputContainer

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"
HOSTILE = FIXTURES / "hostile"
FORMATS = FIXTURES / "formats"
MANIFEST = FIXTURES / "manifest.json"

SAMPLE_RATE = 16_000
RANDOM_SEED = 20240607
# Anything longer than this is refused with 413 by the service.
MAX_AUDIO_SECONDS = 600
TWO_HOURS_SECONDS = 2 * 60 * 60
# Two hours of FLAC silence is ~360 kB at 16 kHz but ~180 kB at 8 kHz; the
# lower rate keeps the fixtures small and still decodes to two hours.
LONG_SILENCE_RATE = 8_000


@dataclass(frozen=True)
class SpeechClip:
    """One synthesised sentence (or short paragraph) with a known script."""

    language: str
    voice: str
    speed: int
    text: str
    distinct: bool = False
    # Probability with which the multilingual Whisper "base" model detected
    # ``language`` for this exact file when the sentence was chosen.
    base_language_probability: float | None = None


# English clips.  Plain words only: no digits, number words, abbreviations,
# contractions, hyphenated compounds, proper nouns or words with British and
# American spellings, so the script can be compared word for word with a
# transcript.
ENGLISH: list[SpeechClip] = [
    SpeechClip("en", "en-us", 140, "A small boat drifted across the calm lake."),
    # The four "distinct" clips: pairwise disjoint vocabularies, and none of
    # them uses the little words (the, a, and, of, to, in, it) that Whisper
    # likes to insert, so a stray word is not mistaken for a leak.
    SpeechClip(
        "en",
        "en-us+f2",
        150,
        "Ripe yellow bananas, sweet red cherries, green apples, purple grapes.",
        distinct=True,
    ),
    SpeechClip(
        "en",
        "en-gb-x-rp",
        150,
        "Rusty engines rattled loudly while heavy steel gears turned slowly.",
        distinct=True,
    ),
    SpeechClip(
        "en",
        "en-gb-x-rp+f2",
        130,
        "Cold wind howled, thunder rumbled, rain poured down all night.",
        distinct=True,
    ),
    SpeechClip(
        "en",
        "en-us-nyc",
        130,
        "Hungry whales chased tiny fish through freezing ocean water.",
        distinct=True,
    ),
    SpeechClip(
        "en",
        "en+f4",
        150,
        "Every morning the baker opens the shop early and fills the shelves with warm bread.",
    ),
    SpeechClip(
        "en",
        "en-gb-x-rp+f2",
        160,
        "The children walked slowly along the quiet river, looking for smooth stones "
        "to throw into the water.",
    ),
    SpeechClip(
        "en",
        "en-gb-x-rp",
        150,
        "Please close the door quietly when you leave, because the baby is sleeping "
        "in the next room.",
    ),
    SpeechClip(
        "en",
        "en-us",
        170,
        "After dinner we sat on the porch and watched the sky turn from blue to orange "
        "as the sun went down behind the hills.",
    ),
    SpeechClip(
        "en",
        "en-gb",
        170,
        "The farmer woke before dawn, fed the chickens, and walked across the wet grass "
        "to open the gate for the sheep.",
    ),
    SpeechClip(
        "en",
        "en-us+m3",
        170,
        "The library in our town is a quiet place where people come to read, study, "
        "and think. On rainy afternoons it is often full of students who sit at the "
        "long wooden tables with their books open in front of them.",
    ),
    SpeechClip(
        "en",
        "en+f3",
        190,
        "When you plant a garden, you should start by choosing a sunny spot with good "
        "soil. Water the seeds gently every day, pull out the weeds when they appear, "
        "and be patient while the young plants grow.",
    ),
    SpeechClip(
        "en",
        "en-us",
        150,
        "It was late in the evening when the storm finally passed. The streets were wet "
        "and shining under the lamps, the air smelled fresh and clean, and somewhere in "
        "the distance a dog was barking at nothing at all.",
    ),
    SpeechClip(
        "en",
        "en-us+m7",
        170,
        "The museum was crowded on the first warm day of spring. Families walked slowly "
        "past the paintings, and a group of young students gathered around an old map "
        "of the world, pointing at the places they hoped to visit one day.",
    ),
    SpeechClip(
        "en",
        "en-us+f2",
        180,
        "Learning to cook is easier than many people think. Begin with simple meals that "
        "use only a few fresh ingredients, such as soup, rice, or roasted vegetables. "
        "Taste the food as you go, add salt a little at a time, and do not be afraid to "
        "make mistakes, because every mistake teaches you something useful.",
    ),
    SpeechClip(
        "en",
        "en-gb-x-rp",
        140,
        "The old lighthouse stood at the edge of the cliff for many years, guiding ships "
        "safely past the dangerous rocks below. Every night the keeper climbed the narrow "
        "stairs, cleaned the heavy glass, and lit the great lamp. Even when the wind "
        "howled and the waves crashed against the walls, the light never went out, and "
        "the sailors always knew the way home.",
    ),
]

# Non-English clips for the multilingual model.  Each sentence/voice/speed was
# picked from a larger set of candidates because Whisper "base" (int8, CPU)
# recognised its language with a comfortable margin; many plausible French
# sentences are heard as Thai, Japanese or English when spoken by espeak.
OTHER_LANGUAGES: list[SpeechClip] = [
    SpeechClip(
        "de",
        "de",
        130,
        "Ich möchte gerne ein Glas Wasser und eine Tasse Kaffee mit Milch bestellen.",
        base_language_probability=0.992,
    ),
    SpeechClip(
        "de",
        "de",
        130,
        "Könnten Sie mir bitte sagen, wo sich der nächste Bahnhof befindet?",
        base_language_probability=0.955,
    ),
    SpeechClip(
        "fr",
        "fr",
        130,
        "Le matin, je prends mon petit déjeuner avec un café au lait, du pain et de la confiture.",
        base_language_probability=0.906,
    ),
    SpeechClip(
        "fr",
        "fr+f3",
        130,
        "Je ne sais pas pourquoi, mais cette chanson française me rend toujours très heureux.",
        base_language_probability=0.967,
    ),
    SpeechClip(
        "es",
        "es",
        130,
        "Mi abuela siempre prepara una sopa deliciosa cuando hace mucho frío.",
        base_language_probability=0.881,
    ),
    SpeechClip(
        "es",
        "es",
        130,
        "Mañana vamos a la playa con nuestros amigos para nadar y comer pescado.",
        base_language_probability=0.849,
    ),
]


# --------------------------------------------------------------------------
# small helpers


def run(cmd: list[str]) -> None:
    """Run an external tool, failing loudly with its stderr."""
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr}")


def sox(*args: str) -> None:
    """Run sox repeatably (-R: fixed random seed) and without dither (-D)."""
    run(["sox", "-R", "-D", *args])


def require_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"missing tools: {', '.join(missing)} (apt-get install espeak-ng sox)")


def words(text: str) -> set[str]:
    """Lower-cased words of ``text`` with punctuation dropped."""
    return set(re.findall(r"[a-z']+", text.lower()))


# Words Whisper tends to insert on its own; the "distinct" clips avoid them.
FILLER_WORDS = frozenset({"the", "a", "an", "and", "of", "to", "in", "it", "is"})


def check_distinct_vocabularies(clips: list[SpeechClip]) -> None:
    distinct = [clip for clip in clips if clip.distinct]
    for clip in distinct:
        if words(clip.text) & FILLER_WORDS:
            raise ValueError(f"distinct clip uses filler words: {clip.text!r}")
    for i, first in enumerate(distinct):
        for second in distinct[i + 1 :]:
            shared = words(first.text) & words(second.text)
            if shared:
                raise ValueError(
                    f"distinct clips share words {sorted(shared)}: {first.text!r} / {second.text!r}"
                )


def clip_filename(index: int, clip: SpeechClip) -> str:
    voice = clip.voice.replace("+", "-")
    return f"{clip.language}_{index:02d}_{voice}.flac"


def rel(path: Path) -> str:
    return path.relative_to(FIXTURES).as_posix()


def report(path: Path, note: str = "") -> None:
    size = path.stat().st_size
    print(f"wrote {rel(path):40s} {size:>9,d} B  {note}")


def decoded_duration(path: Path) -> float:
    """Decode every audio frame with PyAV and return samples / sample rate."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.codec_context.sample_rate


def sox_to_flac(source: Path, dest: Path) -> None:
    # -G: lower the gain rather than clip while resampling.
    sox("-G", str(source), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(dest))


# --------------------------------------------------------------------------
# speech


def synthesise(clip: SpeechClip, dest: Path, workdir: Path) -> None:
    raw = workdir / (dest.stem + ".espeak.wav")
    run(["espeak-ng", "-v", clip.voice, "-s", str(clip.speed), "-w", str(raw), clip.text])
    sox_to_flac(raw, dest)


def make_speech(workdir: Path) -> list[dict[str, Any]]:
    check_distinct_vocabularies(ENGLISH)
    entries: list[dict[str, Any]] = []
    groups: list[list[SpeechClip]] = [ENGLISH]
    for language in ("de", "fr", "es"):
        groups.append([clip for clip in OTHER_LANGUAGES if clip.language == language])
    for group in groups:
        for index, clip in enumerate(group, start=1):
            dest = FIXTURES / clip_filename(index, clip)
            synthesise(clip, dest, workdir)
            duration = round(decoded_duration(dest), 3)
            entry: dict[str, Any] = {
                "file": rel(dest),
                "text": clip.text,
                "language": clip.language,
                "voice": clip.voice,
                "speed": clip.speed,
                "duration_s": duration,
                "distinct": clip.distinct,
            }
            if clip.base_language_probability is not None:
                entry["base_language_probability"] = clip.base_language_probability
            entries.append(entry)
            report(dest, f"{duration:6.2f} s  {clip.voice}")
    return entries


def make_silence() -> dict[str, Any]:
    dest = FIXTURES / "silence_5s.flac"
    sox("-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(dest), "trim", "0", "5")
    duration = decoded_duration(dest)
    report(dest, f"{duration:6.2f} s")
    return {
        "file": rel(dest),
        "duration_s": round(duration, 3),
        "description": "5 s of digital silence",
    }


# --------------------------------------------------------------------------
# hostile inputs


def wav_header(
    data_bytes: int, rate: int = SAMPLE_RATE, channels: int = 1, bits: int = 16
) -> bytes:
    """A canonical 44-byte RIFF/WAVE PCM header announcing ``data_bytes``."""
    block_align = channels * bits // 8
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,  # fmt chunk size
        1,  # PCM
        channels,
        rate,
        rate * block_align,  # byte rate
        block_align,
        bits,
        b"data",
        data_bytes,
    )


def png_image(width: int = 16, height: int = 16) -> bytes:
    """A small, valid RGB PNG (a colour gradient) built by hand."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        crc = zlib.crc32(body) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", crc)

    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type: none
        for x in range(width):
            rows += bytes((x * 255 // (width - 1), y * 255 // (height - 1), 128))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + chunk(b"IEND", b"")
    )


def make_hostile(speech: list[dict[str, Any]], workdir: Path) -> dict[str, dict[str, Any]]:
    HOSTILE.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict[str, Any]] = {}

    def put(name: str, data: bytes, description: str, status: int, **extra: Any) -> None:
        dest = HOSTILE / name
        dest.write_bytes(data)
        entries[rel(dest)] = {"description": description, "expected_status": status, **extra}
        report(dest, f"-> {status}")

    noise = random.Random(RANDOM_SEED).randbytes(4096)
    put("random_bytes.bin", noise, "4096 seeded pseudo-random bytes", 400)
    put("random_bytes.mp3", noise, "the same 4096 pseudo-random bytes named .mp3", 400)
    put("empty.wav", b"", "zero-byte file", 400)
    put(
        "text.wav",
        b"This is a plain text file, not audio.\nIt only pretends to be a WAV file by its name.\n",
        "English text file named .wav",
        400,
    )
    one_second = SAMPLE_RATE * 2  # 16-bit mono
    put(
        "header_only.wav",
        wav_header(one_second),
        "44-byte RIFF/WAVE PCM header with no samples; declares 1 s of 16 kHz 16-bit mono",
        400,
        declared_duration_s=1.0,
    )

    english = [entry for entry in speech if entry["language"] == "en"]
    long_clip = min((e for e in english if e["duration_s"] >= 10), key=lambda e: e["duration_s"])
    flac_bytes = (FIXTURES / long_clip["file"]).read_bytes()
    put(
        "truncated.flac",
        flac_bytes[: len(flac_bytes) // 2],
        f"first 50% of the bytes of {long_clip['file']} ({long_clip['duration_s']} s)",
        400,
        source=long_clip["file"],
        declared_duration_s=long_clip["duration_s"],
    )
    put(
        "truncated_tiny.flac",
        flac_bytes[:3000],
        f"first 3000 bytes of {long_clip['file']}",
        400,
        source=long_clip["file"],
        declared_duration_s=long_clip["duration_s"],
    )

    short_clip = min(english, key=lambda e: e["duration_s"])
    full_wav = workdir / "full.wav"
    sox(str(FIXTURES / short_clip["file"]), "-b", "16", "-e", "signed-integer", str(full_wav))
    wav_bytes = full_wav.read_bytes()
    put(
        "truncated.wav",
        wav_bytes[: len(wav_bytes) // 2],
        f"16 kHz 16-bit mono WAV of {short_clip['file']} cut to 50% of its bytes; "
        "the header still claims the full length",
        400,
        source=short_clip["file"],
        declared_duration_s=short_clip["duration_s"],
    )

    put(
        "image.mp3",
        png_image(),
        "valid 16x16 PNG image named .mp3 (opens, but has no audio stream)",
        415,
    )

    dest = HOSTILE / "two_hours_silence.flac"
    seconds = str(TWO_HOURS_SECONDS)
    sox("-n", "-r", str(LONG_SILENCE_RATE), "-c", "1", "-b", "16", str(dest), "trim", "0", seconds)
    entries[rel(dest)] = {
        "description": (
            f"{TWO_HOURS_SECONDS} s of digital silence, {LONG_SILENCE_RATE // 1000} kHz mono FLAC "
            f"(over the {MAX_AUDIO_SECONDS} s limit)"
        ),
        "expected_status": 413,
        "declared_duration_s": float(TWO_HOURS_SECONDS),
    }
    report(dest, "-> 413")
    return entries


# --------------------------------------------------------------------------
# other containers


def read_pcm(path: Path) -> np.ndarray:
    """Decode ``path`` to 16 kHz mono int16 samples."""
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks)


def pcm_frames(samples: np.ndarray, layout: str, block: int = 1024) -> list[av.AudioFrame]:
    """Cut mono int16 samples into PyAV frames (duplicated across channels for stereo)."""
    channels = 2 if layout == "stereo" else 1
    frames: list[av.AudioFrame] = []
    for start in range(0, len(samples), block):
        piece = samples[start : start + block]
        interleaved = np.repeat(piece, channels).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(interleaved, format="s16", layout=layout)
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        frame.time_base = Fraction(1, SAMPLE_RATE)
        frames.append(frame)
    return frames


def add_audio_stream(
    container: OutputContainer, codec: str, rate: int, layout: str, bit_rate: int
) -> av.AudioStream:
    stream = container.add_stream(codec, rate=rate)
    if not isinstance(stream, av.AudioStream):
        raise TypeError(f"{codec} is not an audio codec")
    stream.layout = layout
    stream.bit_rate = bit_rate
    stream.codec_context.flags |= av.codec.context.Flags.bitexact
    return stream


def encode_audio(stream: av.AudioStream, samples: np.ndarray, layout: str) -> list[av.Packet[Any]]:
    packets: list[av.Packet[Any]] = []
    for frame in pcm_frames(samples, layout):
        packets.extend(stream.encode(frame))
    packets.extend(stream.encode(None))
    return packets


# Leave out encoder version strings and random ids so reruns give identical bytes.
BITEXACT = {"fflags": "+bitexact"}


def write_audio_only(
    dest: Path,
    fmt: str,
    codec: str,
    rate: int,
    layout: str,
    bit_rate: int,
    samples: np.ndarray,
) -> None:
    with av.open(str(dest), "w", format=fmt, container_options=BITEXACT) as container:
        stream = add_audio_stream(container, codec, rate, layout, bit_rate)
        for packet in encode_audio(stream, samples, layout):
            container.mux(packet)


def write_mp4_with_video(dest: Path, samples: np.ndarray) -> None:
    """H.264 64x64 @ 10 fps colour ramp plus an AAC audio track."""
    fps = 10
    seconds = len(samples) / SAMPLE_RATE
    with av.open(str(dest), "w", format="mp4", container_options=BITEXACT) as container:
        video = container.add_stream("libx264", rate=fps)
        if not isinstance(video, av.VideoStream):
            raise TypeError(f"libx264 gave a {type(video).__name__}")
        video.width = 64
        video.height = 64
        video.pix_fmt = "yuv420p"
        video.codec_context.thread_count = 1
        video.codec_context.flags |= av.codec.context.Flags.bitexact
        video.codec_context.options = {"preset": "veryfast", "crf": "35"}
        audio = add_audio_stream(container, "aac", 48_000, "mono", 48_000)

        packets: list[av.Packet[Any]] = []
        for index in range(int(seconds * fps) + 1):
            shade = int(255 * index / max(1, seconds * fps))
            image = np.zeros((64, 64, 3), dtype=np.uint8)
            image[:, :, 0] = shade
            image[:, :, 2] = 255 - shade
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            packets.extend(video.encode(frame))
        packets.extend(video.encode(None))
        packets.extend(encode_audio(audio, samples, "mono"))

        # Interleave by decode time (dts, not pts: the video has B-frames);
        # sorted() is stable, so each stream keeps its own order.
        def decode_time(packet: av.Packet[Any]) -> Fraction:
            stamp = packet.dts if packet.dts is not None else packet.pts
            return Fraction(stamp or 0) * packet.time_base

        for packet in sorted(packets, key=decode_time):
            container.mux(packet)


def make_formats(speech: list[dict[str, Any]]) -> list[dict[str, Any]]:
    FORMATS.mkdir(parents=True, exist_ok=True)
    english = [entry for entry in speech if entry["language"] == "en"]
    source_entry = min(english, key=lambda e: e["duration_s"])
    source = FIXTURES / source_entry["file"]
    stem = Path(source_entry["file"]).stem
    samples = read_pcm(source)
    entries: list[dict[str, Any]] = []

    def record(
        dest: Path,
        container: str,
        codec: str,
        rate: int,
        channels: int,
        video: str | None = None,
    ) -> None:
        duration = decoded_duration(dest)
        entry: dict[str, Any] = {
            "file": rel(dest),
            "source": source_entry["file"],
            "text": source_entry["text"],
            "container": container,
            "audio_codec": codec,
            "sample_rate": rate,
            "channels": channels,
            "duration_s": round(duration, 3),
        }
        if video is not None:
            entry["video_codec"] = video
        entries.append(entry)
        report(dest, f"{duration:6.2f} s  {container}/{codec}{'+' + video if video else ''}")

    dest = FORMATS / f"{stem}.wav"
    sox(str(source), "-b", "16", "-e", "signed-integer", str(dest))
    record(dest, "wav", "pcm_s16le", SAMPLE_RATE, 1)

    dest = FORMATS / f"{stem}.mp3"
    write_audio_only(dest, "mp3", "libmp3lame", 44_100, "stereo", 64_000, samples)
    record(dest, "mp3", "mp3", 44_100, 2)

    dest = FORMATS / f"{stem}.ogg"
    sox(str(source), "-C", "3", str(dest))  # Vorbis quality 3
    record(dest, "ogg", "vorbis", SAMPLE_RATE, 1)

    dest = FORMATS / f"{stem}.m4a"
    write_audio_only(dest, "ipod", "aac", 48_000, "mono", 48_000, samples)
    record(dest, "mp4 (m4a)", "aac", 48_000, 1)

    dest = FORMATS / f"{stem}.webm"
    write_audio_only(dest, "webm", "libopus", 48_000, "mono", 32_000, samples)
    record(dest, "webm", "opus", 48_000, 1)

    dest = FORMATS / f"{stem}.mp4"
    write_mp4_with_video(dest, samples)
    record(dest, "mp4", "aac", 48_000, 1, video="h264")
    return entries


# --------------------------------------------------------------------------


def previous_outputs() -> set[str]:
    """Files listed by an earlier manifest (so stale ones can be removed)."""
    if not MANIFEST.exists():
        return set()
    try:
        old = json.loads(MANIFEST.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    names: set[str] = set()
    for section in ("clips", "silence", "formats"):
        names.update(entry["file"] for entry in old.get(section, []))
    names.update(old.get("hostile", {}))
    return names


def main() -> None:
    require_tools()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    stale = previous_outputs()

    with tempfile.TemporaryDirectory(prefix="make_fixtures_") as tmp:
        workdir = Path(tmp)
        clips = make_speech(workdir)
        silence = make_silence()
        hostile = make_hostile(clips, workdir)
        formats = make_formats(clips)

    manifest: dict[str, Any] = {
        "generated_by": "scripts/make_fixtures.py",
        "sample_rate": SAMPLE_RATE,
        "clips": clips,
        "silence": [silence],
        "hostile": hostile,
        "formats": formats,
    }
    MANIFEST.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    report(MANIFEST)

    written = {entry["file"] for entry in [*clips, silence, *formats]} | set(hostile)
    for name in sorted(stale - written):
        path = FIXTURES / name
        if path.is_file():
            path.unlink()
            print(f"removed stale {name}")

    total = sum(path.stat().st_size for path in FIXTURES.rglob("*") if path.is_file())
    speech_seconds = sum(entry["duration_s"] for entry in clips if entry["language"] == "en")
    print(
        f"{len(clips)} speech clips ({speech_seconds:.1f} s of English); "
        f"tests/fixtures is {total:,d} bytes"
    )


if __name__ == "__main__":
    main()
