"""`diarized_json` and the result cache: the transcription half of a speaker-labelled request
is cached like any request with word timing; the speaker turns are computed every time
(they depend on `num_speakers` and the references). The real engine in process; the speaker
labeller is a stand-in behind its Protocol (what is tested is the service's caching)."""

from __future__ import annotations

from pathlib import Path

from services.core.cache import MemoryCache
from services.core.settings import Settings
from services.diarization.pipeline import Turn
from services.transcription.domain import Transcript, TranscriptionOptions, Waveform
from services.transcription.engine import WhisperEngine
from services.transcription.local import LocalTranscriber
from services.transcription.models import ServedModels
from services.transcription.request import TranscriptionRequest
from services.transcription.result_cache import ResultCache
from services.transcription.service import TranscriptionService

FIXTURE = Path(__file__).parents[1] / "fixtures" / "en_01_en-us.flac"


class _CountingTranscriber(LocalTranscriber):
    calls = 0

    async def transcribe(
        self, audio: Waveform, options: TranscriptionOptions, *, background: bool = False
    ) -> Transcript:
        self.calls += 1
        return await super().transcribe(audio, options, background=background)


class _OneSpeakerThenTwo:
    """Turns that change between calls, so a cached answer would show."""

    def __init__(self) -> None:
        self.calls = 0

    async def diarize(
        self, audio: Waveform, num_speakers: int | None, references: list[tuple[str, Waveform]]
    ) -> list[Turn]:
        self.calls += 1
        end = len(audio) / 16000
        if self.calls == 1:
            return [Turn(0.0, end, "A")]
        return [Turn(0.0, end / 2, "A"), Turn(end / 2, end, "B")]


async def test_the_transcript_is_cached_and_the_speakers_are_not(
    settings: Settings, tiny_engine: WhisperEngine
) -> None:
    models = ServedModels.from_settings(settings)
    transcriber = _CountingTranscriber(tiny_engine)
    labeller = _OneSpeakerThenTwo()
    results = ResultCache(MemoryCache(1 << 20), model_id=models.default.id, enabled=True, ttl_s=60)
    service = TranscriptionService(
        {models.default.id: transcriber},
        {models.default.id: results},
        models=models,
        sync_max_duration_s=60,
        diarizer=labeller,
    )
    request = TranscriptionRequest(model="whisper-1", response_format="diarized_json")
    answers = []
    for _ in range(2):
        with FIXTURE.open("rb") as file:
            rendered = await service.transcribe(file, request)
        assert isinstance(rendered.content, dict)
        answers.append(rendered.content)
    assert (transcriber.calls, labeller.calls) == (1, 2)
    first, second = answers
    assert first["text"] == second["text"]
    assert first["text"].strip()
    assert {s["speaker"] for s in first["segments"]} == {"A"}
    assert {s["speaker"] for s in second["segments"]} == {"A", "B"}
    # A plain request with word timing now reuses what the diarized one computed.
    words = TranscriptionRequest(
        model="whisper-1", response_format="verbose_json", timestamp_granularities=["word"]
    )
    with FIXTURE.open("rb") as file:
        await service.transcribe(file, words)
    assert transcriber.calls == 1
