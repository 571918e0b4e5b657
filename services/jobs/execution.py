"""One attempt at one job, under its lease: the chunk loop and the outcome it records.

The claim loop (`runner.py`) hands each claimed job to `JobExecutor.run` with the lease
token it was claimed under. Chunks of long audio are stored as they finish, so a retry
resumes where the last attempt stopped, and `progress` counts them; the cut points are
recorded before a chunk is sent, so a retry cuts exactly where this attempt did.

Each step is one unit of work (one transaction): a chunk's progress and the chunk itself,
the cut points, the outcome. Every write names the lease token (compare-and-set), so once
the lease is lost (cancelled, or requeued after a lost lease) the step changes nothing and
the attempt ends (`LeaseLostError`): a late result is discarded. A step that changed the
job reads its view in the same transaction and announces it (`JobEvents`) after commit.

Overload and replica restarts are interruptions, not failures: the job waits with capped
backoff and keeps its attempts.

A `diarized_json` job also needs its speaker turns (`speakers.py`): found once over the
whole file, beside the chunks, and stored under the lease; the job succeeds only once both
halves are stored, and `progress` counts the speakers as one more step than the chunks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.core.clock import utcnow
from services.core.db import transaction
from services.core.errors import ServiceError
from services.core.logging import get_logger
from services.core.metrics import telemetry
from services.core.settings import JobsSettings
from services.core.storage import AudioStorage
from services.diarization.pipeline import turns_to_rows
from services.jobs import failures
from services.jobs.chunking import BLOCK_S, CHUNKS_IN_FLIGHT, Chunk, Chunker, ChunkPlan, boundaries
from services.jobs.events import JobEvents
from services.jobs.leases import LeaseRepository
from services.jobs.speakers import JobDiarizer, Steps
from services.jobs.tables import Job
from services.jobs.views import JobView
from services.transcription.audio import AudioDecoder, scan_duration_s
from services.transcription.domain import (
    Transcript,
    TranscriptionOptions,
    transcript_from_dict,
    transcript_to_dict,
)
from services.transcription.merge import ChunkTranscript, merge_chunks
from services.transcription.request import TranscriptionRequest
from services.transcription.result_cache import ResultCache
from services.transcription.service import SpeakerLabeller, Transcriber

log = get_logger(__name__)


class LeaseLostError(Exception):
    """The job is no longer this runner's (cancelled, or requeued after a lost lease)."""


class AudioMissingError(ServiceError):
    status_code = 410
    error_type = "invalid_request_error"
    default_code = "audio_deleted"


def job_transcription_options(job: Job) -> TranscriptionOptions:
    """Jobs always keep word timestamps: any format can be asked for later."""
    decode = TranscriptionRequest.model_validate(job.options).decode_options()
    return TranscriptionOptions(decode=decode, word_timestamps=True)


class JobExecutor:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        storage: AudioStorage,
        events: JobEvents,
        results: ResultCache,
        transcriber: Transcriber,
        settings: JobsSettings,
        on_finished: Callable[[Job, float], Awaitable[None]] | None = None,
        speakers: SpeakerLabeller | None = None,
    ) -> None:
        self._sessions = sessions
        self._storage = storage
        self._events = events
        self._results = results
        self._transcriber = transcriber
        self._settings = settings
        self._on_finished = on_finished
        """Called once per succeeded job with its decoded length (usage reconciliation)."""
        self._diarizer = JobDiarizer(
            storage=storage, labeller=speakers, max_duration_s=settings.max_duration_s
        )

    async def run(self, job: Job, epoch: int) -> None:
        """Run `job`, claimed under lease token `epoch`, and record how it ended."""
        if job.chunk_s is None:  # a row from before jobs stored their own chunk length
            job.chunk_s = self._settings.chunk_s
        with structlog.contextvars.bound_contextvars(job_id=job.id, attempt=job.attempts):
            try:
                transcript = await self._work(job, epoch)
                await self._finish(job, epoch, transcript)
            except LeaseLostError:
                log.info("job_left", reason="cancelled or lease lost")
            except Exception as exc:
                if failures.is_interruption(exc):
                    await self._interrupted(job, epoch, exc)
                else:
                    await self._failed(job, epoch, exc)

    async def _work(self, job: Job, epoch: int) -> Transcript:
        """The transcript, once it and (for a diarized job) the speaker turns are stored."""
        request = TranscriptionRequest.model_validate(job.options)
        steps = Steps.of(job, request.diarized)
        if request.diarized:
            async with transaction(self._sessions) as session:
                steps.speakers_done = (
                    await LeaseRepository(session).speaker_turns(job.id) is not None
                )
        if not request.diarized or steps.speakers_done:  # stored turns are never found again
            return await self._transcribe(job, epoch, steps)
        words = asyncio.create_task(self._transcribe(job, epoch, steps))
        speakers = asyncio.create_task(self._label(job, epoch, request, steps))
        halves: list[asyncio.Task[Any]] = [words, speakers]
        try:
            finished, _ = await asyncio.wait(halves, return_when=asyncio.FIRST_EXCEPTION)
            for half in finished:
                half.result()  # the first failure of either ends the attempt
        finally:
            for half in halves:
                half.cancel()
            await asyncio.gather(*halves, return_exceptions=True)
        return words.result()

    async def _label(
        self, job: Job, epoch: int, request: TranscriptionRequest, steps: Steps
    ) -> None:
        """Diarize the whole file once and store its turns under the lease."""
        if job.audio_key is None:
            raise AudioMissingError("The job's audio was deleted before it could run.")
        async with transaction(self._sessions) as session:
            references = await LeaseRepository(session).speaker_references(job.id)
        turns = await self._diarizer.diarize(job.audio_key, request, references)

        def done(steps: Steps) -> None:
            steps.speakers_done = True

        async def store(repo: LeaseRepository) -> None:
            await repo.save_speaker_turns(job.id, turns_to_rows(turns), utcnow())

        await self._record_step(job, epoch, steps, done, store)

    async def _transcribe(self, job: Job, epoch: int, steps: Steps) -> Transcript:
        options = job_transcription_options(job)
        cached = await self._results.get(job.audio_sha256, options)
        if cached is not None:
            return cached
        if job.audio_key is None:
            raise AudioMissingError("The job's audio was deleted before it could run.")
        async with transaction(self._sessions) as session:
            repo = LeaseRepository(session)
            done = await repo.chunks(job.id)
            cut_points = await repo.cut_points(job.id)
        plan = ChunkPlan.of(job.chunk_s or self._settings.chunk_s, self._settings)
        file = await asyncio.to_thread(self._storage.open, job.audio_key)
        try:
            decoder = await asyncio.to_thread(AudioDecoder, file)
            declared = decoder.info.declared_duration_s
            if declared is None:
                declared = await asyncio.to_thread(self._scan_duration_s, job.audio_key)
            chunker = Chunker(
                decoder.blocks(max_duration_s=self._settings.max_duration_s, block_s=BLOCK_S),
                plan,
                known=boundaries(cut_points),
            )
            resumed = next(k for k in range(len(done) + 1) if k not in done)
            total = max(resumed, steps.chunks_total, plan.chunks_for(declared))
            await self._record_chunk(job, epoch, steps, resumed - 1, None, True, total, declared)
            parts: list[ChunkTranscript] = []
            # Up to `CHUNKS_IN_FLIGHT` chunks are with the model at once, so it never waits
            # for the tracker to decode the next one, and its batches fill across chunks.
            sent: deque[tuple[Chunk, asyncio.Task[Transcript] | None]] = deque()
            try:
                ended = False
                while not ended or sent:
                    chunk = None if ended else await asyncio.to_thread(chunker.next)
                    if chunk is not None:
                        if chunk.decided and not chunk.last:
                            cut_points = [*cut_points, chunk.end_s, chunk.next_start_s]
                            await self._record_cut_points(job, epoch, cut_points)
                        work = None if chunk.index in done else asyncio.create_task(
                            self._transcriber.transcribe(chunk.audio, options, background=True)
                        )  # fmt: skip
                        sent.append((chunk.without_audio(), work))
                    ended = ended or chunk is None or chunk.last
                    del chunk  # hold no chunk audio beyond what is with the model
                    if not sent or (len(sent) < CHUNKS_IN_FLIGHT and not ended):
                        continue
                    finished, work = sent.popleft()
                    known = work is None
                    part = (
                        transcript_from_dict(done[finished.index]) if work is None else await work
                    )
                    parts.append(ChunkTranscript(finished.start_s, finished.end_s, part))
                    if finished.last:
                        total = finished.index + 1  # exact now (a header that claimed more lied)
                    else:
                        remaining = declared - finished.end_s if declared else None
                        total = max(total, finished.index + 1 + plan.chunks_for(remaining))
                    seconds = declared if declared and not finished.last else finished.end_s
                    await self._record_chunk(
                        job, epoch, steps, finished.index, part, known, total, seconds
                    )
            finally:
                for _, work in sent:
                    if work is not None:
                        work.cancel()
        finally:
            file.close()
        transcript = merge_chunks(parts, chunker.decoded_s)
        await self._results.put(job.audio_sha256, options, transcript)
        return transcript

    async def _record_chunk(
        self,
        job: Job,
        epoch: int,
        steps: Steps,
        index: int,
        part: Transcript | None,
        known: bool,
        total: int,
        seconds: float | None,
    ) -> None:
        """Progress after chunk `index` (-1: none yet), and the chunk itself when it is new."""

        def done(steps: Steps) -> None:
            steps.chunks_done, steps.chunks_total, steps.seconds = index + 1, total, seconds

        async def store(repo: LeaseRepository) -> None:
            if part is not None and not known:
                await repo.save_chunk(job.id, index, transcript_to_dict(part))

        await self._record_step(job, epoch, steps, done, store)

    async def _record_step(
        self,
        job: Job,
        epoch: int,
        steps: Steps,
        done: Callable[[Steps], None],
        store: Callable[[LeaseRepository], Awaitable[None]],
    ) -> None:
        """One step of a job (a chunk, or its speakers) done: progress and what the step
        stored in one transaction under the lease, then the new state announced. Steps of
        one job run side by side, so each updates `steps` under its lock."""
        async with steps.lock:
            done(steps)
            async with transaction(self._sessions) as session:
                repo = LeaseRepository(session)
                if not await repo.progress(
                    job_id=job.id,
                    epoch=epoch,
                    done=steps.done,
                    total=steps.total,
                    duration_s=steps.seconds,
                ):
                    raise LeaseLostError
                await store(repo)
                view = await _view(repo, job.id)
        await self._events.announce([view])

    async def _record_cut_points(self, job: Job, epoch: int, cut_points: list[float]) -> None:
        """Recorded before the chunk is sent: a retry cuts exactly where this attempt did."""
        async with transaction(self._sessions) as session:
            if not await LeaseRepository(session).record_cut_points(
                job_id=job.id, epoch=epoch, cut_points=cut_points
            ):
                raise LeaseLostError

    def _scan_duration_s(self, key: str) -> float | None:
        with self._storage.open(key) as file:
            return scan_duration_s(file)

    async def _finish(self, job: Job, epoch: int, transcript: Transcript) -> None:
        async with transaction(self._sessions) as session:
            repo = LeaseRepository(session)
            if not await repo.succeed(
                job_id=job.id,
                epoch=epoch,
                transcript=transcript_to_dict(transcript),
                duration_s=transcript.duration_s,
                now=utcnow(),
            ):
                raise LeaseLostError
            view = await _view(repo, job.id)
        log.info("job_succeeded", audio_s=round(transcript.duration_s, 1))
        await self._events.announce([view])
        await self._after_finish(job, transcript.duration_s)

    async def _after_finish(self, job: Job, decoded_s: float) -> None:
        """Usage reconciliation (services/limits); never fails the job, already stored."""
        if self._on_finished is None:
            return
        try:
            await self._on_finished(job, decoded_s)
        except Exception as exc:
            log.warning("job_finish_hook_failed", error=repr(exc))

    async def _interrupted(self, job: Job, epoch: int, exc: Exception) -> None:
        """Overload or a replica restart: wait with capped backoff; attempts are kept."""
        now = utcnow()
        exponent = min(job.interruptions or 0, 30)
        delay = min(
            self._settings.interruption_backoff_max_s,
            self._settings.retry_backoff_s * 2**exponent,
        )
        try:
            async with transaction(self._sessions) as session:
                repo = LeaseRepository(session)
                left = await repo.interrupted(
                    job_id=job.id, epoch=epoch, at=now + timedelta(seconds=delay), now=now
                )
                views = [await _view(repo, job.id)] if left else []
        except Exception as db_exc:  # the lease will expire and the job be requeued
            log.warning("job_outcome_not_recorded", error=repr(db_exc))
            return
        telemetry.job_interrupted()
        log.info(
            "job_interrupted",
            reason=getattr(exc, "code", type(exc).__name__),
            delay_s=delay,
            interruptions=(job.interruptions or 0) + 1,
        )
        await self._events.announce(views)

    async def _failed(self, job: Job, epoch: int, exc: Exception) -> None:
        """Store a code and a safe message; the exception itself goes to the log only."""
        now = utcnow()
        failure = failures.describe(exc, audio_key=job.audio_key)
        final = failure.permanent or job.attempts >= job.max_attempts
        telemetry.job_failure(failure.code, final=final)
        if final and not failure.permanent:
            failure = failures.gave_up(failure, job.attempts)
        log.warning(
            "job_failed" if final else "job_retry_scheduled",
            code=failure.code,
            error=repr(exc),
            exc_info=exc if not isinstance(exc, ServiceError) else None,
        )
        try:
            async with transaction(self._sessions) as session:
                repo = LeaseRepository(session)
                if final:
                    left = await repo.fail(
                        job_id=job.id,
                        epoch=epoch,
                        error=failure.message,
                        code=failure.code,
                        now=now,
                    )
                else:
                    delay = self._settings.retry_backoff_s * 2 ** (job.attempts - 1)
                    left = await repo.retry_later(
                        job_id=job.id,
                        epoch=epoch,
                        error=failure.message,
                        code=failure.code,
                        at=now + timedelta(seconds=delay),
                        now=now,
                    )
                views = [await _view(repo, job.id)] if left else []
        except Exception as db_exc:  # the lease will expire and the job be requeued
            log.warning("job_outcome_not_recorded", error=repr(db_exc))
            return
        await self._events.announce(views)


async def _view(repo: LeaseRepository, job_id: str) -> JobView:
    """The job as this transaction just left it (what its caller announces after commit)."""
    job = await repo.get(job_id)
    assert job is not None  # this transaction just changed it under our lease
    return JobView.of(job)
