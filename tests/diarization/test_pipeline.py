"""Speaker labels on flite conversations of 1-4 distinct recorded voices (real encoder)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs the diarization extra")

from services.diarization.metrics import der
from services.diarization.pipeline import (
    Diarizer,
    Reference,
    Turn,
    speaker_at,
    speaker_segments,
)
from services.transcription.audio import decode_audio
from services.transcription.domain import Word
from tests.audio_variants import Variant, encode, matrix
from tests.diarization.conversations import VOICES, conversation, reference_audio

NAMES = {"awb": "Alan", "rms": "Rob", "slt": "Sally", "kal16": "Kal"}


@pytest.fixture(scope="module")
def diarizer() -> Diarizer:
    return Diarizer()


@pytest.mark.parametrize("gap_s", [0.0, 0.6], ids=["butted", "gaps"])
@pytest.mark.parametrize("speakers", [2, 3, 4])
def test_der_and_count(diarizer: Diarizer, speakers: int, gap_s: float) -> None:
    audio, truth = conversation(speakers, gap_s=gap_s, seed=speakers)
    found = diarizer.diarize(audio)
    error = der(truth, found)
    print(f"{speakers} speakers, gap {gap_s}s: DER {error:.3%}")
    assert len({t.speaker for t in found}) == speakers
    assert error <= 0.05
    assert found[0].speaker == "A"


def test_single_voice_is_one_speaker(diarizer: Diarizer) -> None:
    audio, _ = conversation(1, rounds=4)
    assert {t.speaker for t in diarizer.diarize(audio)} == {"A"}


def test_num_speakers_override(diarizer: Diarizer) -> None:
    audio, truth = conversation(3, seed=7)
    found = diarizer.diarize(audio, num_speakers=3)
    assert len({t.speaker for t in found}) == 3
    assert der(truth, found) <= 0.05


def test_references_name_the_turns(diarizer: Diarizer) -> None:
    named = right = 0
    for speakers in (2, 3, 4):
        audio, truth = conversation(speakers, seed=10 + speakers, gap_s=0.3)
        references = [Reference(NAMES[v], reference_audio(v)) for v in VOICES[:speakers]]
        found = diarizer.diarize(audio, references=references)
        for turn in truth:
            named += 1
            right += speaker_at(found, turn.start, turn.end) == NAMES[turn.speaker]
    print(f"references: {right}/{named} turns named right")
    assert right / named >= 0.95


# A phone call at 8 kHz, a laptop's 44.1 kHz stereo MP3, a browser's 48 kHz Opus and a
# phone's AAC: references and conversation both go through the service's decoder.
ACROSS = [
    v
    for v in matrix()
    if (v.suffix, v.rate, v.channels)
    in {("wav", 8000, 1), ("mp3", 44100, 2), ("webm", 48000, 1), ("m4a", 22050, 2)}
    and v.sample_format in (None, "s16")
]


@pytest.mark.parametrize("variant", ACROSS, ids=lambda v: v.id)
def test_references_name_the_turns_in_other_containers_and_rates(
    diarizer: Diarizer, variant: Variant
) -> None:
    def through(audio: np.ndarray) -> np.ndarray:
        return decode_audio(encode(variant, audio), max_duration_s=300)

    audio, truth = conversation(3, rounds=2, seed=21, gap_s=0.3)
    references = [Reference(NAMES[v], through(reference_audio(v))) for v in VOICES[:3]]
    found = diarizer.diarize(through(audio), references=references)
    right = sum(speaker_at(found, t.start, t.end) == NAMES[t.speaker] for t in truth)
    print(f"{variant.id}: {right}/{len(truth)} turns named right")
    assert right / len(truth) >= 0.95
    assert der(truth, found) <= 0.05


def test_unmatched_cluster_keeps_a_letter(diarizer: Diarizer) -> None:
    audio, _ = conversation(2, seed=3)
    found = diarizer.diarize(audio, references=[Reference("Sally", reference_audio("slt"))])
    assert {t.speaker for t in found} == {"A", "B"}


def test_silence_has_no_turns(diarizer: Diarizer) -> None:
    assert diarizer.diarize(np.zeros(16_000 * 3, dtype=np.float32)) == []


def test_der_function() -> None:
    truth = [Turn(0, 5, "x"), Turn(5, 10, "y")]
    assert der(truth, [Turn(0, 5, "B"), Turn(5, 10, "A")]) == 0.0
    assert der(truth, [Turn(0, 10, "A")]) == pytest.approx(0.5, abs=0.03)
    assert der(truth, []) == 1.0


def test_speaker_at_midpoint_and_nearest() -> None:
    turns = [Turn(0, 2, "A"), Turn(3, 5, "B")]
    assert speaker_at(turns, 1.9, 2.2) == "A"  # midpoint in the pause, nearer A
    assert speaker_at(turns, 2.2, 3.0) == "B"  # midpoint in the pause, nearer B
    assert speaker_at(turns, 0.2, 0.8) == "A"
    assert speaker_at(turns, 3.5, 4.0) == "B"
    assert speaker_at([], 0, 1) is None


def test_words_group_into_runs_of_one_speaker() -> None:
    turns = [Turn(0, 2, "A"), Turn(2, 4, "B"), Turn(4.5, 6, "A")]
    words = [
        Word(0.1, 0.5, " Hello", 1.0),
        Word(0.6, 1.9, " there.", 1.0),
        Word(1.95, 2.5, " Hi,", 1.0),  # midpoint 2.2: B
        Word(2.6, 3.0, " you.", 1.0),
        Word(4.2, 4.4, " Bye.", 1.0),  # midpoint in the pause, nearer A's next turn
    ]
    segments = speaker_segments(words, turns)
    assert [(s.speaker, s.text) for s in segments] == [
        ("A", "Hello there."),
        ("B", "Hi, you."),
        ("A", "Bye."),
    ]
    assert (segments[1].start, segments[1].end) == (1.95, 3.0)
