"""A process's shared resources: built once per process by `build_resources`, closed once.

Every process that touches jobs builds one (an ingress replica, a tracker replica, a test):
the database engine and sessions, the audio store, the cache, the result cache and the jobs
service over them. The ingress adds its HTTP-only parts on top (`deployments.dependencies`);
the tracker adds a runner (`runner()`). `close()` gives the connections back on a graceful
stop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.core.cache import Cache, FallbackCache, MemoryCache, RedisCache, create_cache
from services.core.db import create_engine, session_factory
from services.core.s3_storage import S3AudioStorage
from services.core.settings import Settings
from services.core.storage import AudioStorage, LocalAudioStorage
from services.jobs.runner import JobRunner
from services.jobs.service import JobsService
from services.limits.wiring import job_usage_reconciler
from services.transcription.models import ServedModels
from services.transcription.result_cache import ResultCache, ResultStore, engine_version
from services.transcription.service import SpeakerLabeller, Transcriber


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    storage: AudioStorage
    cache: Cache
    results: ResultCache
    jobs: JobsService
    models: ServedModels
    """Every served model, the default first."""
    model_results: dict[str, ResultCache]
    """Each served model's result cache (`results` is the default model's)."""

    @property
    def model_id(self) -> str:
        return self.jobs.model_id

    def results_for(self, model_id: str) -> ResultCache:
        return self.model_results.get(model_id, self.results)

    def runner(
        self,
        name: str,
        transcriber: Transcriber,
        *,
        model_id: str | None = None,
        speakers: SpeakerLabeller | None = None,
    ) -> JobRunner:
        """A runner for the jobs of one model (the default unless `model_id` is given);
        `speakers` labels the speakers of its `diarized_json` jobs."""
        model_id = model_id or self.jobs.model_id
        return JobRunner(
            name=name,
            sessions=self.sessions,
            storage=self.storage,
            jobs=self.jobs,
            results=self.results_for(model_id),
            transcriber=transcriber,
            settings=self.settings.jobs,
            model_id=model_id,
            on_finished=job_usage_reconciler(self.settings, self.storage),
            speakers=speakers,
        )

    async def close(self) -> None:
        """Give the database and Redis connections back (a graceful stop, a test's end)."""
        if isinstance(self.cache, RedisCache):
            await self.cache.close()
        await self.engine.dispose()


def build_resources(settings: Settings, *, nudge: Callable[[], None]) -> Resources:
    """`nudge` tells a tracker that new work was queued (the ingress passes its handle's)."""
    engine = create_engine(settings)
    sessions = session_factory(engine)
    storage = build_storage(settings)
    memory_max_bytes = settings.cache.memory_max_bytes
    cache = create_cache(settings.redis, memory_max_bytes=memory_max_bytes)
    # Transcripts may fall back to this process's LRU while Redis is down; job status
    # (`cache`, given to JobsService) never does: it reads the database instead.
    store: ResultStore = cache
    if isinstance(cache, RedisCache):
        store = FallbackCache(cache, MemoryCache(memory_max_bytes))
    models = ServedModels.from_settings(settings)
    model_results = {
        model.id: ResultCache(
            store,
            model_id=model.id,
            enabled=settings.cache.enabled,
            ttl_s=settings.cache.result_ttl_s,
            engine=engine_version(model.id, models.settings_for(settings, model.id).whisper),
        )
        for model in models
    }
    model_id = models.default.id
    results = model_results[model_id]
    jobs = JobsService(
        sessions=sessions,
        storage=storage,
        cache=cache,
        settings=settings.jobs,
        status_ttl_s=settings.cache.status_ttl_s,
        model_id=model_id,
        nudge=nudge,
        models=models,
        diarization=settings.diarization.enabled,
    )
    return Resources(
        settings, engine, sessions, storage, cache, results, jobs, models, model_results
    )


def build_storage(settings: Settings) -> AudioStorage:
    """Job audio under `data_dir` (one node, or a shared disk) or on S3 (any number of nodes)."""
    if settings.storage.backend == "s3":
        return S3AudioStorage.from_settings(settings.storage)
    return LocalAudioStorage(settings.audio_dir)
