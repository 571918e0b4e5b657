"""The asynchronous jobs use case: submit, read, cancel, list, follow.

Transactions, one rule for all of `services/jobs`:
- Repositories (`repository.py`, `leases.py`) never commit, roll back or begin; they run
  statements in the session they are given.
- One service method is one unit of work: it opens exactly one `transaction()`, does all
  its reads and writes in it, and owns it whoever calls it (a controller, the tracker, a
  test). No method takes a session from its caller or runs inside a caller's transaction.
  Here that is each public method of `JobsService`; in the runner each step of a job
  (`execution.py`) and each turn of the claim loop (`runner.py`). Work that is long by
  nature runs as many units: the sweep (one per batch, `sweeper.py`), a stream of events
  (one per read).
- Anything outside the database (audio storage, the status cache, events, the tracker's
  nudge) happens before the transaction or after it committed, and is told what that
  transaction committed (`JobEvents`), never what a later read happens to see.

A submission is acknowledged (202) only once its audio and its row are durable: the audio
is streamed to storage and hashed, the row (and its idempotency key) committed in one
transaction. Decisions (DELETE) read the row, never the status cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import timedelta
from typing import BinaryIO

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.core.cache import Cache
from services.core.clock import utcnow
from services.core.db import transaction
from services.core.errors import ConflictError, GoneError, InvalidRequestError, NotFoundError
from services.core.logging import get_logger
from services.core.paging import check_page
from services.core.settings import JobsSettings
from services.core.storage import AudioStorage, StoredAudio
from services.diarization.pipeline import MAX_DIARIZED_S, turns_of_rows
from services.diarization.render import diarized_json
from services.jobs.chunking import estimated_chunks
from services.jobs.events import JobEvents
from services.jobs.repository import JobRepository
from services.jobs.speakers import diarized_too_long, not_diarized
from services.jobs.sweeper import Sweeper, SweepReport
from services.jobs.tables import ACTIVE, Job, JobStatus
from services.jobs.views import JobPage, JobView
from services.transcription.audio import AudioTooLongError, probe_audio
from services.transcription.domain import ResponseFormat, TimestampGranularity, transcript_from_dict
from services.transcription.formats import RenderedTranscript, render
from services.transcription.models import ServedModels
from services.transcription.request import TranscriptionRequest
from services.transcription.request_speakers import KNOWN_SPEAKER_FIELDS
from services.transcription.service import DIARIZATION_UNAVAILABLE, DiarizationUnavailableError
from services.transcription.speaker_references import decode_references, to_pcm

log = get_logger(__name__)

Quota = Callable[[AsyncSession, str | None, int], Awaitable[None]]
"""Per-owner quotas checked inside the submission transaction (raises to refuse)."""

ANONYMOUS_SCOPE = "anonymous"
SWEEP_BUDGET_S = 10.0
"""Longest one retention sweep runs before it yields back to the tracker's loop."""


class JobsService:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        storage: AudioStorage,
        cache: Cache,
        settings: JobsSettings,
        status_ttl_s: int,
        model_id: str,
        nudge: Callable[[], None],
        models: ServedModels | None = None,
        diarization: bool = False,
    ) -> None:
        self._sessions = sessions
        self._diarization = diarization
        """Speaker labels are enabled (`diarized_json` jobs are accepted)."""
        self._storage = storage
        self._settings = settings
        self.model_id = model_id
        """The default model's id (`whisper-1`); `models` routes the others."""
        self._models = models
        self.job_events = JobEvents(cache=cache, status_ttl_s=status_ttl_s, nudge=nudge)
        """Status cache, events and nudges: the runner announces through this one too."""
        self._sweeper = Sweeper(
            sessions=sessions, storage=storage, settings=settings, evict=self.job_events.evict
        )

    # -- submit -------------------------------------------------------------------------

    async def submit(
        self,
        upload: BinaryIO,
        request: TranscriptionRequest,
        *,
        owner: str | None,
        idempotency_key: str | None,
        quota: Quota | None = None,
    ) -> tuple[JobView, bool]:
        """Store the audio and the job durably; returns the job and whether it is new.

        `quota` is checked in the transaction that inserts the job (services/limits).
        The upload's size is bounded before it gets here, by the HTTP edge's body limit."""
        if request.diarized and not self._diarization:
            raise DiarizationUnavailableError(DIARIZATION_UNAVAILABLE, param="response_format")
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
            raise InvalidRequestError(
                "Idempotency-Key must be 1 to 255 characters.", param="Idempotency-Key"
            )
        # Known speakers' clips are decoded now: a bad one is refused before the job exists.
        references = [(n, to_pcm(a)) for n, a in await decode_references(request)]
        info = await asyncio.to_thread(probe_audio, upload)  # refuses what decoding would
        declared = info.declared_duration_s
        if declared is not None and declared > self._settings.max_duration_s:
            # Refused before storing: the header's claim is enough to say no. A header that
            # understates is caught by the decode-time cap when the job runs.
            raise AudioTooLongError(
                f"The audio declares {declared:.1f} s; jobs accept at most "
                f"{self._settings.max_duration_s:g} s.",
                param="file",
            )
        if request.diarized and declared is not None and declared > MAX_DIARIZED_S:
            raise AudioTooLongError(diarized_too_long(declared), param="file")
        upload.seek(0)
        stored = await self._storage.save(upload)
        try:
            view, created = await self._create(
                stored, info.declared_duration_s, request, owner, idempotency_key, quota, references
            )
        except BaseException:
            await self._storage.delete(stored.key)
            raise
        if created:
            await self.changed(view)
            log.info("job_submitted", job_id=view.id, bytes=stored.size)
        else:
            await self._storage.delete(stored.key)  # a retry of a job we already hold
        return view, created

    async def _create(
        self,
        stored: StoredAudio,
        declared_s: float | None,
        request: TranscriptionRequest,
        owner: str | None,
        idempotency_key: str | None,
        quota: Quota | None = None,
        references: Sequence[tuple[str, bytes]] = (),
    ) -> tuple[JobView, bool]:
        now = utcnow()
        model = self._model_of(request)
        request_hash = request.fingerprint(stored.sha256)
        if model != self.model_id:  # keys stored for the default model must keep matching
            request_hash = hashlib.sha256(f"{request_hash}|model={model}".encode()).hexdigest()
        job = Job(
            id=str(uuid.uuid4()),
            owner=owner,
            status=JobStatus.QUEUED,
            task=request.task.value,
            model=model,
            # The known speakers live in job_speaker_references, not in the row.
            options=request.model_dump(mode="json", exclude=set(KNOWN_SPEAKER_FIELDS)),
            audio_key=stored.key,
            audio_sha256=stored.sha256,
            audio_bytes=stored.size,
            audio_duration_s=declared_s,
            attempts=0,
            max_attempts=self._settings.max_attempts,
            progress_done=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(seconds=self._settings.retention_s),
            result_deleted=False,
            interruptions=0,
            version=0,
            chunk_s=self._settings.chunk_s,
            # A diarized job's speakers are one more step (`speakers.Steps`).
            progress_total=estimated_chunks(declared_s, self._settings.chunk_s, self._settings)
            + int(request.diarized),
        )
        async with transaction(self._sessions) as session:
            repo = JobRepository(session)
            if idempotency_key is not None:
                held = await repo.claim_key(
                    scope=owner or ANONYMOUS_SCOPE,
                    key=idempotency_key,
                    job_id=job.id,
                    request_hash=request_hash,
                    now=now,
                    ttl_s=self._settings.idempotency_ttl_s,
                )
                if held is not None:
                    if held.request_hash != request_hash:
                        raise ConflictError(
                            "This Idempotency-Key was already used with different audio or "
                            "fields; use a new key for a new job.",
                            param="Idempotency-Key",
                            code="idempotency_key_reused",
                        )
                    existing = await repo.get(held.job_id)
                    if existing is not None:
                        return JobView.of(existing), False
            if quota is not None:
                await quota(session, owner, stored.size)
            await repo.add(job, references)
            return JobView.of(job), True

    def _model_of(self, request: TranscriptionRequest) -> str:
        """The served model the job runs on (the tracker routes it by this id)."""
        if self._models is None:
            return self.model_id
        return self._models.resolve(request.model).id

    # -- reads --------------------------------------------------------------------------

    async def get(self, job_id: str, owner: str | None) -> JobView:
        """Read through the shared status cache (without Redis every read is a query)."""
        _check_id(job_id)
        view = await self.job_events.cached(job_id)
        if view is None:
            view = await self._read(job_id)
            # A change committed since our read has a higher version and wins.
            await self.job_events.remember(view)
        if owner is not None and view.owner != owner:
            raise _not_found(job_id)
        return view

    async def get_fresh(self, job_id: str) -> JobView:
        """The job as the database has it now, bypassing the status cache."""
        return await self._read(job_id)

    async def _read(self, job_id: str) -> JobView:
        async with transaction(self._sessions) as session:
            job = await JobRepository(session).get(job_id)
            if job is None:
                raise _not_found(job_id)
            return JobView.of(job)

    async def result(
        self,
        job_id: str,
        owner: str | None,
        response_format: ResponseFormat | None,
        granularities: list[TimestampGranularity],
    ) -> RenderedTranscript:
        _check_id(job_id)
        async with transaction(self._sessions) as session:
            repo = JobRepository(session)
            job = await repo.get(job_id)
            if job is None or (owner is not None and job.owner != owner):
                raise _not_found(job_id)
            if job.status != JobStatus.SUCCEEDED:
                raise ConflictError(
                    f"Job {job_id} is {job.status}; its result exists once it has succeeded.",
                    code="job_not_succeeded",
                )
            if job.result_deleted:
                raise GoneError(f"The result of job {job_id} was deleted.", code="result_deleted")
            stored = await repo.result(job_id)
            request = TranscriptionRequest.model_validate(job.options)
            wanted = request.rendered_as(response_format, granularities)
            turns = await repo.speaker_turns(job_id) if wanted.diarized else None
        if stored is None:
            raise GoneError(f"The result of job {job_id} was deleted.", code="result_deleted")
        transcript = transcript_from_dict(stored)
        if wanted.diarized:  # the same renderer as a synchronous diarized_json
            if turns is None:
                raise not_diarized(job_id)
            return RenderedTranscript(
                diarized_json(transcript, turns_of_rows(turns)), "application/json"
            )
        return render(transcript, wanted)

    async def page(
        self, owner: str | None, status: JobStatus | None, limit: int, cursor: str | None
    ) -> JobPage:
        check_page(limit, cursor)
        async with transaction(self._sessions) as session:
            jobs, next_cursor = await JobRepository(session).page(
                owner=owner, status=status, limit=limit, cursor=cursor
            )
            return JobPage(data=[JobView.of(job) for job in jobs], next_cursor=next_cursor)

    # -- cancel and retention -------------------------------------------------------------

    async def cancel_or_delete(self, job_id: str, owner: str | None) -> JobView:
        """Cancel an active job; on a finished one delete its audio and result. Idempotent.

        Which of the two is decided from the row, locked in this transaction, never from the
        status cache: a stale cached "succeeded" must not turn a cancel into an erase.
        """
        _check_id(job_id)
        audio_key = None
        async with transaction(self._sessions) as session:
            repo = JobRepository(session)
            job = await repo.lock(job_id)
            if job is None or (owner is not None and job.owner != owner):
                raise _not_found(job_id)
            if job.status in ACTIVE and await repo.cancel(job_id, utcnow()):
                log.info("job_cancelled", job_id=job_id)
            else:  # finished (or it finished before our compare-and-set): erase its data
                audio_key = await repo.forget_data(job_id, utcnow())
            job = await repo.get(job_id)
            assert job is not None
            view = JobView.of(job)
        if audio_key:
            await self._storage.delete(audio_key)
        await self.changed(view)
        return view

    async def purge_expired(self) -> int:
        """One retention sweep (the tracker calls it every `sweep_interval_s`): returns
        how many jobs' data it deleted. Bounded by time, not by a count."""
        return (await self.sweep()).forgotten

    async def sweep(self, budget_s: float = SWEEP_BUDGET_S) -> SweepReport:
        report = await self._sweeper.sweep(budget_s)
        if report.forgotten or report.tombstones or report.idempotency_keys or report.orphans:
            log.info("retention_swept", **asdict(report))
        return report

    # -- events -------------------------------------------------------------------------

    async def changed(self, view: JobView) -> None:
        """After a committed change: refresh the status cache, publish the event."""
        await self.job_events.changed(view)

    async def refresh(self, job_ids: Sequence[str]) -> None:
        """After a change made in bulk (the tracker's requeues): re-read those jobs and
        announce each as `changed` would, so no cached status outlives the change."""
        if not job_ids:
            return
        async with transaction(self._sessions) as session:
            jobs = await JobRepository(session).get_many(list(job_ids))
        for job in jobs:
            await self.job_events.changed(JobView.of(job))

    def events(self, job_id: str, owner: str | None) -> AsyncIterator[JobView]:
        """Status changes of one job until it finishes (see `JobEvents.follow`)."""
        return self.job_events.follow(job_id, lambda: self.get(job_id, owner), self._read)


def _check_id(job_id: str) -> None:
    try:
        uuid.UUID(job_id)
    except ValueError as exc:
        raise _not_found(job_id) from exc


def _not_found(job_id: str) -> NotFoundError:
    return NotFoundError(f"No job {job_id!r}.", param="job_id", code="job_not_found")
