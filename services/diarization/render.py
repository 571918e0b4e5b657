"""`response_format=diarized_json`, in OpenAI's shape (gpt-4o-transcribe-diarize).

`text`, `duration`, `task`, `usage`, and `segments` of `id`, `start`, `end`, `speaker`,
`text` and `type: "transcript.text.segment"`; a segment is a run of words of one speaker.
Pure: the transcript (with word timestamps) and the speaker turns in, a dict out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.diarization.pipeline import Turn, speaker_segments
from services.transcription.domain import Transcript
from services.transcription.formats import usage_of_seconds


def diarized_json(transcript: Transcript, turns: Sequence[Turn]) -> dict[str, Any]:
    segments = speaker_segments(transcript.words, turns)
    return {
        "task": "transcribe",
        "duration": round(transcript.duration_s, 3),
        "text": transcript.text,
        "segments": [
            {
                "type": "transcript.text.segment",
                "id": f"seg_{index}",
                "start": round(segment.start, 3),
                "end": round(segment.end, 3),
                "speaker": segment.speaker,
                "text": segment.text,
            }
            for index, segment in enumerate(segments)
        ],
        "usage": usage_of_seconds(transcript.duration_s).model_dump(),
    }
