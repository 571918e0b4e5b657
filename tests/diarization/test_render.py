"""`diarized_json` from a real tiny.en transcript and the real speaker encoder."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="needs the diarization extra")

from services.diarization.pipeline import Diarizer, Turn
from services.diarization.render import diarized_json
from services.transcription.domain import Segment, Transcript, TranscriptionOptions, Word
from services.transcription.engine import WhisperEngine
from tests.diarization.conversations import conversation


def test_shape_matches_openai() -> None:
    words = [Word(0.0, 0.4, " Hi", 1.0), Word(0.5, 0.9, " there.", 1.0)]
    words += [Word(1.2, 1.6, " Hello.", 1.0)]
    segment = Segment(0, 0, 0.0, 1.6, " Hi there. Hello.", [], 0.0, 0.0, 1.0, 0.0, words)
    transcript = Transcript("Hi there. Hello.", "en", 1.0, 2.0, [segment])
    body = diarized_json(transcript, [Turn(0.0, 1.0, "A"), Turn(1.1, 2.0, "Rob")])
    assert body == {
        "task": "transcribe",
        "duration": 2.0,
        "text": "Hi there. Hello.",
        "segments": [
            {
                "type": "transcript.text.segment",
                "id": "seg_0",
                "start": 0.0,
                "end": 0.9,
                "speaker": "A",
                "text": "Hi there.",
            },
            {
                "type": "transcript.text.segment",
                "id": "seg_1",
                "start": 1.2,
                "end": 1.6,
                "speaker": "Rob",
                "text": "Hello.",
            },
        ],
        "usage": {"type": "duration", "seconds": 2.0},
    }


def test_conversation_segments_follow_the_turns(tiny_engine: WhisperEngine) -> None:
    audio, truth = conversation(2, rounds=2, gap_s=0.6, seed=5)
    transcript = tiny_engine.transcribe(audio, TranscriptionOptions(word_timestamps=True))
    body = diarized_json(transcript, Diarizer().diarize(audio))
    speakers = [s["speaker"] for s in body["segments"]]
    expected = ["A" if t.speaker == truth[0].speaker else "B" for t in truth]
    assert speakers == expected
    for segment, turn in zip(body["segments"], truth, strict=True):
        assert turn.start - 0.5 <= segment["start"] <= segment["end"] <= turn.end + 0.5
