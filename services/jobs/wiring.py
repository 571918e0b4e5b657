"""Builds the resources the jobs use case needs, once per process (ingress or tracker)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.core.cache import Cache, FallbackCache, MemoryCache, RedisCache, create_cache
from services.core.db import create_engine, session_factory
from services.core.settings import Settings
from services.core.storage import LocalAudioStorage
from services.jobs.runner import JobRunner
from services.jobs.service import JobsService
from services.limits.wiring import job_usage_reconciler
from services.transcription.model_files import served_model_id
from services.transcription.result_cache import ResultCache, ResultStore, engine_version
from services.transcription.service import Transcriber


@dataclass
class JobRuntime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    storage: LocalAudioStorage
    cache: Cache
    results: ResultCache
    jobs: JobsService

    def runner(self, name: str, transcriber: Transcriber) -> JobRunner:
        return JobRunner(
            name=name,
            sessions=self.sessions,
            storage=self.storage,
            jobs=self.jobs,
            results=self.results,
            transcriber=transcriber,
            settings=self.settings.jobs,
            model_id=self.jobs.model_id,
            on_finished=job_usage_reconciler(self.settings, self.storage),
        )


def build_job_runtime(settings: Settings, *, nudge: Callable[[], None]) -> JobRuntime:
    engine = create_engine(settings)
    sessions = session_factory(engine)
    storage = LocalAudioStorage(settings.audio_dir)
    memory_max_bytes = settings.cache.memory_max_bytes
    cache = create_cache(settings.redis, memory_max_bytes=memory_max_bytes)
    # Transcripts may fall back to this process's LRU while Redis is down; job status
    # (`cache`, given to JobsService) never does: it reads the database instead.
    store: ResultStore = cache
    if isinstance(cache, RedisCache):
        store = FallbackCache(cache, MemoryCache(memory_max_bytes))
    model_id = served_model_id(settings)
    results = ResultCache(
        store,
        model_id=model_id,
        enabled=settings.cache.enabled,
        ttl_s=settings.cache.result_ttl_s,
        engine=engine_version(model_id, settings.whisper),
    )
    jobs = JobsService(
        sessions=sessions,
        storage=storage,
        cache=cache,
        settings=settings.jobs,
        status_ttl_s=settings.cache.status_ttl_s,
        model_id=model_id,
        nudge=nudge,
    )
    return JobRuntime(settings, engine, sessions, storage, cache, results, jobs)
