"""The in-process LRU (byte cap), the result cache's fallback and its engine-versioned key."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from services.core.cache import CircuitBreaker, FallbackCache, MemoryCache, RedisCache
from services.transcription import audio
from services.transcription.domain import Transcript, TranscriptionOptions
from services.transcription.result_cache import ResultCache, engine_version
from tests.conftest import report
from tests.servers import PrivateRedis

CAP = 1024 * 1024


async def test_lru_stays_under_its_byte_cap_with_ten_times_the_cap_pushed_through() -> None:
    cache = MemoryCache(CAP)
    rng = random.Random(7)
    pushed = peak = count = 0
    tracemalloc.start()
    try:
        while pushed < 10 * CAP:
            value = "x" * rng.randint(10, 20_000)  # tiny and large entries mixed
            await cache.set(f"key:{count}", value, ttl_s=3600)
            pushed += len(value)
            count += 1
            peak = max(peak, cache.bytes_used)
            assert cache.bytes_used <= CAP
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert await cache.get(f"key:{count - 1}") is not None  # the newest entry is kept
    assert await cache.get("key:0") is None  # the oldest went
    report(
        f"MemoryCache LRU: pushed {pushed / CAP:.1f}x the {CAP} B cap in {count} entries; "
        f"peak byte count {peak} B (<= cap), {len(cache)} entries kept, "
        f"{held / CAP:.2f}x the cap held by Python"
    )
    assert held < 2 * CAP  # the count tracks what the process really holds


async def test_lru_evicts_the_least_recently_used_and_counts_every_change() -> None:
    cache = MemoryCache(3000)
    for key in ("a", "b", "c"):
        await cache.set(key, "v" * 500, ttl_s=60)
    assert await cache.get("a") is not None  # "a" is now the most recent
    await cache.set("d", "v" * 500, ttl_s=60)
    assert await cache.get("b") is None
    assert await cache.get("a") is not None
    used = cache.bytes_used
    await cache.set("a", "v" * 100, ttl_s=60)  # overwriting recounts, never adds
    assert cache.bytes_used == used - 400
    await cache.delete("a")
    await cache.delete("a")
    await cache.set("huge", "v" * 5000, ttl_s=60)  # larger than the cap: not kept
    assert await cache.get("huge") is None
    assert sum([await cache.get(k) is not None for k in ("c", "d")]) == 2
    assert 0 < cache.bytes_used <= 3000
    empty = MemoryCache(0)
    await empty.set("k", "v", ttl_s=60)
    assert (await empty.get("k"), empty.bytes_used) == (None, 0)


async def test_lru_entries_expire_and_give_their_bytes_back() -> None:
    now = [0.0]
    cache = MemoryCache(10_000, clock=lambda: now[0])
    await cache.set("k", "v" * 100, ttl_s=5)
    assert await cache.get("k") == "v" * 100
    now[0] = 6.0
    assert await cache.get("k") is None
    assert cache.bytes_used == 0


def _transcript(text: str) -> Transcript:
    return Transcript(
        text=text, language="en", language_probability=1.0, duration_s=1.0, segments=[]
    )


async def test_result_key_changes_with_the_decoder_version(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryCache(CAP)
    options = TranscriptionOptions()

    def results() -> ResultCache:
        return ResultCache(store, model_id="tiny.en", enabled=True, ttl_s=60)

    monkeypatch.setattr(audio, "DECODER_VERSION", "broken-1")
    broken = results()
    await broken.put("sha", options, _transcript("garbled"))
    assert (await broken.get("sha", options)).text == "garbled"  # type: ignore[union-attr]
    monkeypatch.setattr(audio, "DECODER_VERSION", "fixed-2")
    assert await results().get("sha", options) is None


def test_engine_version_names_decoder_engine_packages_model_and_settings() -> None:
    from services.core.settings import WhisperSettings

    version = engine_version("tiny.en", WhisperSettings(beam_size=2))
    for part in ("decoder=", "faster-whisper=1.", "ctranslate2=4.", "model=tiny.en", "beam=2"):
        assert part in version
    assert version != engine_version("tiny.en", WhisperSettings(beam_size=1))
    assert engine_version("tiny.en") != engine_version("base")


async def test_fallback_serves_from_memory_while_redis_is_down(
    private_redis: PrivateRedis,
) -> None:
    redis = RedisCache(private_redis.url, timeout_s=0.3, breaker=CircuitBreaker(3, 0.5))
    memory = MemoryCache(CAP)
    cache = FallbackCache(redis, memory)
    try:
        await cache.set("up", "from-redis", 60)
        assert await cache.get("up") == "from-redis"
        assert memory.bytes_used == 0  # Redis answered: nothing kept locally
        private_redis.stop()
        await cache.set("down", "from-memory", 60)  # the failing call itself falls back
        assert await cache.get("down") == "from-memory"
        for _ in range(3):  # through an open breaker too
            assert await cache.get("down") == "from-memory"
        assert redis.available is False
        assert await cache.get("up") is None  # what only Redis held is a miss, not an error
    finally:
        await redis.close()
