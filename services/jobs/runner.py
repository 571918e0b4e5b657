"""What the job tracker does: claim jobs, run them chunk by chunk, record the outcome.

PostgreSQL is the source of truth; the runner only coordinates. Each start is a new
incarnation with a lease token unique across every tracker (fencing). The runner takes
over its own earlier incarnations' leases at once, and any other tracker's only once they
expired, so two trackers can share a database (a rolling deploy) without stealing each
other's jobs. Every state change is compare-and-set on (status, token), so a runner that
lost its lease (presumed dead, or the job was cancelled) can no longer change the job: its
late result is discarded. Transcribing twice after a crash is possible; two results are not.

Overload and replica restarts are interruptions, not failures: the job waits with capped
backoff and keeps its attempts. Chunks of long audio are stored as they finish, so a retry
resumes where the last attempt stopped, and `progress` counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from datetime import timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.core.clock import utcnow
from services.core.db import transaction
from services.core.errors import ServiceError
from services.core.logging import get_logger
from services.core.settings import JobsSettings
from services.core.storage import AudioStorage
from services.jobs import failures
from services.jobs.chunking import BLOCK_S, CHUNKS_IN_FLIGHT, Chunk, Chunker, ChunkPlan, boundaries
from services.jobs.repository import JobRepository
from services.jobs.service import JobsService
from services.jobs.tables import Job
from services.jobs.views import JobView
from services.transcription.audio import AudioDecoder, scan_duration_s
from services.transcription.domain import (
    DecodeOptions,
    Task,
    Transcript,
    TranscriptionOptions,
    transcript_from_dict,
    transcript_to_dict,
)
from services.transcription.merge import ChunkTranscript, merge_chunks
from services.transcription.result_cache import ResultCache
from services.transcription.service import Transcriber

log = get_logger(__name__)

INCARNATION_MEMORY_S = 7 * 24 * 3600.0
"""Rows of incarnations silent this long are deleted (their leases expired long ago)."""


class LeaseLostError(Exception):
    """The job is no longer this runner's (cancelled, or requeued after a lost lease)."""


class AudioMissingError(ServiceError):
    status_code = 410
    error_type = "invalid_request_error"
    default_code = "audio_deleted"


def is_permanent(exc: BaseException) -> bool:
    """A client-side problem (bad audio): retrying cannot help."""
    return failures.describe(exc).permanent


def job_transcription_options(job: Job) -> TranscriptionOptions:
    """Jobs always keep word timestamps: any format can be asked for later."""
    decode = DecodeOptions(
        task=Task(job.task),
        language=job.options.get("language"),
        prompt=job.options.get("prompt"),
        temperature=float(job.options.get("temperature", 0.0)),
    )
    return TranscriptionOptions(decode=decode, word_timestamps=True)


class JobRunner:
    def __init__(
        self,
        *,
        name: str,
        sessions: async_sessionmaker[AsyncSession],
        storage: AudioStorage,
        jobs: JobsService,
        results: ResultCache,
        transcriber: Transcriber,
        settings: JobsSettings,
        model_id: str,
    ) -> None:
        self.name = name
        self._sessions = sessions
        self._storage = storage
        self._jobs = jobs
        self._results = results
        self._transcriber = transcriber
        self._settings = settings
        self._model_id = model_id
        self.epoch = 0
        """This incarnation's lease token (`tracker_incarnations.token`)."""
        self.running: dict[str, asyncio.Task[None]] = {}
        self.loop_at: float | None = None
        """`time.monotonic()` of the loop's last turn: a stuck loop shows here."""
        self._last_purge = float("-inf")
        self.stopping = False
        """Set by `stop()`: no more claims."""

    async def start(self) -> None:
        """Take a new token and take over every lease of earlier incarnations at once."""
        async with transaction(self._sessions) as session:
            repo = JobRepository(session)
            self.epoch = await repo.start_incarnation(
                name=self.name, model=self._model_id, now=utcnow()
            )
            requeued = await repo.requeue_lost(name=self.name, token=self.epoch, now=utcnow())
        log.info("tracker_started", tracker=self.name, epoch=self.epoch, requeued=len(requeued))
        for job_id in requeued:
            await self._publish(job_id)

    async def run_forever(self, wake: asyncio.Event) -> None:
        """Poll until cancelled. Returns only by raising: the caller treats that as fatal."""
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            while True:
                self.loop_at = time.monotonic()
                if heartbeat.done():  # it never ends by itself: a bug, so die loudly
                    heartbeat.result()
                    raise RuntimeError("the heartbeat stopped")
                try:
                    await self.tick()
                except Exception as exc:  # the database may be down: keep polling
                    log.warning("tracker_tick_failed", error=repr(exc), exc_info=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self._settings.poll_interval_s)
                wake.clear()
        finally:
            heartbeat.cancel()
            for task in self.running.values():
                task.cancel()

    async def stop(self) -> None:
        """A graceful stop: claim nothing more, give the running jobs back, sign off.

        The jobs in flight are cancelled and requeued without using up an attempt, so the
        next tracker (a rolling update's new replica) takes them at once instead of after
        their leases expire; their stored chunks are kept. The incarnation then no longer
        counts as serving its model. Call it after `run_forever` was cancelled.
        """
        self.stopping = True
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for attempt in range(1, 4):  # a cancelled job's write may still hold SQLite's lock
            try:
                async with transaction(self._sessions) as session:
                    repo = JobRepository(session)
                    released = await repo.release_leases(token=self.epoch, now=utcnow())
                    await repo.stop_incarnation(token=self.epoch, now=utcnow())
                break
            except Exception as exc:
                if attempt == 3:
                    raise
                log.warning("tracker_stop_retry", attempt=attempt, error=repr(exc))
                await asyncio.sleep(0.2 * attempt)
        log.info("tracker_stopped", tracker=self.name, epoch=self.epoch, released=len(released))
        for job_id in released:
            await self._publish(job_id)

    async def tick(self) -> None:
        """Requeue lost jobs, fail unserved ones, purge expired data, claim what fits."""
        now = utcnow()
        slots = 0 if self.stopping else self._settings.max_concurrent - len(self.running)
        async with transaction(self._sessions) as session:
            repo = JobRepository(session)
            changed = await repo.requeue_lost(name=self.name, token=self.epoch, now=now)
            changed += await repo.fail_unserved(
                served_model=self._model_id,
                grace_s=self._settings.model_grace_s,
                message=failures.model_not_served,
                now=now,
            )
            claimed = await repo.claim(
                model=self._model_id,
                epoch=self.epoch,
                limit=max(slots, 0),
                now=now,
                lease_s=self._settings.lease_s,
                exclude=list(self.running),
            ) if slots > 0 else []  # fmt: skip
        for job_id in changed:
            log.info("job_taken_over_or_failed", job_id=job_id)
            await self._publish(job_id)
        for job in claimed:
            await self._jobs.changed(JobView.of(job))
            if job.id not in self.running:
                self.running[job.id] = asyncio.create_task(self._run(job))
        loop_now = asyncio.get_running_loop().time()
        if loop_now - self._last_purge > self._settings.sweep_interval_s:
            self._last_purge = loop_now
            await self._jobs.purge_expired()
            async with transaction(self._sessions) as session:
                await JobRepository(session).forget_incarnations(
                    before=now - timedelta(seconds=INCARNATION_MEMORY_S)
                )

    async def drain(self) -> None:
        """Wait for the jobs in flight (tests and graceful stops)."""
        while self.running:
            await asyncio.gather(*self.running.values(), return_exceptions=True)

    def heartbeat_interval_s(self) -> float:
        """Often enough to keep leases and to show the model served well within its grace."""
        return min(self._settings.lease_s, self._settings.model_grace_s) / 3

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s())
            now = utcnow()
            until = now + timedelta(seconds=self._settings.lease_s)
            try:
                async with transaction(self._sessions) as session:
                    await JobRepository(session).heartbeat(
                        token=self.epoch, job_ids=list(self.running), until=until, now=now
                    )
            except Exception as exc:
                log.warning("heartbeat_failed", error=repr(exc))

    async def _run(self, job: Job) -> None:
        if job.chunk_s is None:  # a row from before jobs stored their own chunk length
            job.chunk_s = self._settings.chunk_s
        with structlog.contextvars.bound_contextvars(job_id=job.id, attempt=job.attempts):
            try:
                transcript = await self._transcribe(job)
                await self._finish(job, transcript)
            except LeaseLostError:
                log.info("job_left", reason="cancelled or lease lost")
            except Exception as exc:
                if failures.is_interruption(exc):
                    await self._interrupted(job, exc)
                else:
                    await self._failed(job, exc)
            finally:
                self.running.pop(job.id, None)

    async def _transcribe(self, job: Job) -> Transcript:
        options = job_transcription_options(job)
        cached = await self._results.get(job.audio_sha256, options)
        if cached is not None:
            return cached
        if job.audio_key is None:
            raise AudioMissingError("The job's audio was deleted before it could run.")
        async with transaction(self._sessions) as session:
            repo = JobRepository(session)
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
            total = max(resumed, job.progress_total or 0, plan.chunks_for(declared))
            await self._record_chunk(job, resumed - 1, None, True, total, declared)
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
                            await self._record_cut_points(job, cut_points)
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
                    await self._record_chunk(job, finished.index, part, known, total, seconds)
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
        index: int,
        part: Transcript | None,
        known: bool,
        total: int | None,
        seconds: float | None,
    ) -> None:
        """Progress after chunk `index` (-1: none yet), and the chunk itself when it is new."""
        async with transaction(self._sessions) as session:
            repo = JobRepository(session)
            if not await repo.progress(
                job_id=job.id, epoch=self.epoch, done=index + 1, total=total, duration_s=seconds
            ):
                raise LeaseLostError
            if part is not None and not known:
                await repo.save_chunk(job.id, index, transcript_to_dict(part))
        await self._publish(job.id)

    async def _record_cut_points(self, job: Job, cut_points: list[float]) -> None:
        """Recorded before the chunk is sent: a retry cuts exactly where this attempt did."""
        async with transaction(self._sessions) as session:
            if not await JobRepository(session).record_cut_points(
                job_id=job.id, epoch=self.epoch, cut_points=cut_points
            ):
                raise LeaseLostError

    def _scan_duration_s(self, key: str) -> float | None:
        with self._storage.open(key) as file:
            return scan_duration_s(file)

    async def _finish(self, job: Job, transcript: Transcript) -> None:
        async with transaction(self._sessions) as session:
            stored = await JobRepository(session).succeed(
                job_id=job.id,
                epoch=self.epoch,
                transcript=transcript_to_dict(transcript),
                duration_s=transcript.duration_s,
                now=utcnow(),
            )
        if not stored:
            raise LeaseLostError
        log.info("job_succeeded", audio_s=round(transcript.duration_s, 1))
        await self._publish(job.id)

    async def _interrupted(self, job: Job, exc: Exception) -> None:
        """Overload or a replica restart: wait with capped backoff; attempts are kept."""
        now = utcnow()
        exponent = min(job.interruptions or 0, 30)
        delay = min(
            self._settings.interruption_backoff_max_s,
            self._settings.retry_backoff_s * 2**exponent,
        )
        try:
            async with transaction(self._sessions) as session:
                await JobRepository(session).interrupted(
                    job_id=job.id, epoch=self.epoch, at=now + timedelta(seconds=delay), now=now
                )
        except Exception as db_exc:  # the lease will expire and the job be requeued
            log.warning("job_outcome_not_recorded", error=repr(db_exc))
            return
        log.info(
            "job_interrupted",
            reason=getattr(exc, "code", type(exc).__name__),
            delay_s=delay,
            interruptions=(job.interruptions or 0) + 1,
        )
        await self._publish(job.id)

    async def _failed(self, job: Job, exc: Exception) -> None:
        """Store a code and a safe message; the exception itself goes to the log only."""
        now = utcnow()
        failure = failures.describe(exc, audio_key=job.audio_key)
        final = failure.permanent or job.attempts >= job.max_attempts
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
                repo = JobRepository(session)
                if final:
                    await repo.fail(
                        job_id=job.id,
                        epoch=self.epoch,
                        error=failure.message,
                        code=failure.code,
                        now=now,
                    )
                else:
                    delay = self._settings.retry_backoff_s * 2 ** (job.attempts - 1)
                    await repo.retry_later(
                        job_id=job.id,
                        epoch=self.epoch,
                        error=failure.message,
                        code=failure.code,
                        at=now + timedelta(seconds=delay),
                        now=now,
                    )
        except Exception as db_exc:  # the lease will expire and the job be requeued
            log.warning("job_outcome_not_recorded", error=repr(db_exc))
            return
        await self._publish(job.id)

    async def _publish(self, job_id: str) -> None:
        try:
            await self._jobs.changed(await self._jobs.get_fresh(job_id))
        except Exception as exc:
            log.warning("job_event_not_published", error=repr(exc))
