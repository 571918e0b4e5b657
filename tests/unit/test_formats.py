import srt
import webvtt

from services.transcription import formats
from services.transcription.domain import Segment, Task, Transcript, Word


def _transcript() -> Transcript:
    def seg(i: int, start: float, end: float, text: str) -> Segment:
        return Segment(
            id=i, seek=int(start * 100), start=start, end=end, text=text, tokens=[1, 2],
            temperature=0.0, avg_logprob=-0.2, compression_ratio=1.1, no_speech_prob=0.01,
            words=[Word(start=start, end=end, word=text, probability=0.9)],
        )  # fmt: skip

    return Transcript(
        text="Hello there. General Kenobi, you are a bold one.",
        language="en",
        language_probability=1.0,
        duration_s=3725.5,
        segments=[seg(0, 0.0, 1.5, " Hello there."), seg(1, 3723.25, 3725.125, " General Kenobi.")],
    )


def test_srt_parses_with_a_real_parser_and_keeps_times() -> None:
    subtitles = list(srt.parse(formats.to_srt(_transcript())))
    assert [s.content for s in subtitles] == ["Hello there.", "General Kenobi."]
    assert subtitles[1].start.total_seconds() == 3723.25
    assert subtitles[1].end.total_seconds() == 3725.125


def test_vtt_parses_with_a_real_parser() -> None:
    captions = webvtt.from_string(formats.to_vtt(_transcript()))
    assert [c.text for c in captions] == ["Hello there.", "General Kenobi."]
    assert captions[1].start == "01:02:03.250"


def test_empty_transcript_renders_valid_empty_subtitles() -> None:
    empty = Transcript(
        text="", language="en", language_probability=1.0, duration_s=5.0, segments=[]
    )
    assert list(srt.parse(formats.to_srt(empty))) == []
    assert list(webvtt.from_string(formats.to_vtt(empty))) == []
    assert formats.to_text(empty) == ""


def test_verbose_json_has_openai_fields() -> None:
    body = formats.to_verbose_json(_transcript(), task=Task.TRANSCRIBE, include_words=True)
    assert body["task"] == "transcribe"
    assert body["language"] == "english"
    assert body["duration"] == 3725.5
    assert body["usage"] == {"type": "duration", "seconds": 3725.5}
    assert set(body["segments"][0]) == {
        "id", "seek", "start", "end", "text", "tokens", "temperature",
        "avg_logprob", "compression_ratio", "no_speech_prob",
    }  # fmt: skip
    assert body["words"][0] == {"word": "Hello there.", "start": 0.0, "end": 1.5}


def test_verbose_json_leaves_words_out_unless_asked() -> None:
    body = formats.to_verbose_json(_transcript(), task=Task.TRANSLATE, include_words=False)
    assert "words" not in body
    assert body["task"] == "translate"
