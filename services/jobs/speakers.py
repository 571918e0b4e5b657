"""The speaker half of a `diarized_json` job: one diarization over the whole file, kept.

The issue asks that a job's speaker labels be the same across its chunks and across a
resumed job, so diarization is never run per chunk: the speaker labeller (the
`SpeakerDiarizer` deployment) gets the whole decoded file once, alongside the chunks'
transcription, and its turns are stored with the job (`job_speakers`) under the job's lease.
A retry finds them stored and never diarizes again. Which speakers to look for was decided
at submission: `num_speakers` is read from the job's stored request, and the known
speakers' references (decoded and checked then) from `job_speaker_references`, which are
dropped once the turns are stored.

A labeller that is overloaded or restarting is an interruption, as for the model (the job
waits and keeps its attempts and stored chunks); any other failure of it is
`diarization_failed`, retried like any failure of a job, and the job fails once its
attempts are used up: a `diarized_json` job is never answered without its speakers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.core.errors import InvalidRequestError, ServiceError
from services.core.logging import get_logger
from services.core.storage import AudioStorage
from services.diarization.pipeline import (
    MAX_DIARIZED_S,
    Turn,
)
from services.jobs.tables import Job
from services.transcription.audio import AudioTooLongError, decode_audio
from services.transcription.domain import SAMPLE_RATE
from services.transcription.request import TranscriptionRequest
from services.transcription.service import (
    DIARIZATION_UNAVAILABLE,
    DiarizationUnavailableError,
    SpeakerLabeller,
)
from services.transcription.speaker_references import of_pcm

log = get_logger(__name__)


class DiarizationFailedError(ServiceError):
    default_code = "diarization_failed"


DIARIZATION_FAILED = "Labelling the speakers failed; the details were logged."


def diarized_too_long(duration_s: float) -> str:
    return (
        f"Speaker labels (diarized_json) take at most {MAX_DIARIZED_S:g} s of audio; this "
        f"audio lasts {duration_s:.1f} s. Submit it without diarized_json, or in parts."
    )


def not_diarized(job_id: str) -> InvalidRequestError:
    """A result asked for as `diarized_json` of a job submitted without speaker labels."""
    return InvalidRequestError(
        f"Job {job_id} was not submitted with response_format=diarized_json, so its speakers "
        "were not labelled; submit the audio again as a diarized_json job.",
        param="response_format",
    )


@dataclass
class Steps:
    """What one attempt's `progress` says: chunks done of (an estimate of) all chunks, plus
    one step for the speakers of a diarized job. Written under `lock` by both halves."""

    diarized: bool
    chunks_total: int
    seconds: float | None
    chunks_done: int = 0
    speakers_done: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def of(cls, job: Job, diarized: bool) -> Steps:
        chunks = max(1, (job.progress_total or 1) - int(diarized))  # stored totals count both
        return cls(diarized, chunks, job.audio_duration_s)

    @property
    def done(self) -> int:
        return self.chunks_done + int(self.speakers_done)

    @property
    def total(self) -> int:
        return self.chunks_total + int(self.diarized)


class JobDiarizer:
    """Finds a job's speaker turns over its whole audio (the executor stores them)."""

    def __init__(
        self, *, storage: AudioStorage, labeller: SpeakerLabeller | None, max_duration_s: float
    ) -> None:
        self._storage = storage
        self._labeller = labeller
        self._max_duration_s = max_duration_s

    async def diarize(
        self,
        audio_key: str,
        request: TranscriptionRequest,
        references: Sequence[tuple[str, bytes]] = (),
    ) -> list[Turn]:
        """Turns over the whole file; `references` are the known speakers stored at
        submission as (name, 16 kHz 16-bit PCM), already checked then."""
        if self._labeller is None:  # enabled at submission, not on this tracker (any more)
            raise DiarizationUnavailableError(DIARIZATION_UNAVAILABLE, param="response_format")
        audio = await asyncio.to_thread(self._decode, audio_key)
        if audio.size > MAX_DIARIZED_S * SAMPLE_RATE:  # the header understated: never retried
            raise AudioTooLongError(diarized_too_long(audio.size / SAMPLE_RATE), param="file")
        voices = [(name, of_pcm(pcm)) for name, pcm in references]
        try:
            turns = await self._labeller.diarize(audio, request.num_speakers, voices)
        except ServiceError:
            raise  # overload and restarts are interruptions; the rest say what they are
        except Exception as exc:
            log.warning("job_diarization_failed", error=repr(exc), exc_info=exc)
            raise DiarizationFailedError(DIARIZATION_FAILED) from exc
        log.info(
            "job_diarized",
            audio_s=round(audio.size / SAMPLE_RATE, 1),
            turns=len(turns),
            speakers=len({t.speaker for t in turns}),
            known=len(voices),
        )
        return turns

    def _decode(self, audio_key: str) -> Any:
        with self._storage.open(audio_key) as file:
            return decode_audio(file, max_duration_s=self._max_duration_s)
