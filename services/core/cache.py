"""Cache and events: Redis when configured, in-process otherwise; Redis is never required.

The `Cache` protocol covers what the services need: key/value with a TTL, publish and
subscribe. `RedisCache` wraps every call in a circuit breaker, so a dead Redis costs one
short timeout a few times and then nothing at all until it is tried again; callers see a
miss (get), a no-op (set, publish) or `False` (ping), never an error. `MemoryCache` serves
the embedded default: one process's LRU, capped in bytes, and its queues.

`FallbackCache` is for data that is the same wherever it is computed (transcripts): while
Redis is down it keeps such values in this process's LRU instead. The job status cache
never uses it: a process-local copy of a status would go stale (the tracker writes from
another process), so status reads go to the database while Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

from services.core.logging import get_logger
from services.core.settings import RedisSettings

log = get_logger(__name__)
T = TypeVar("T")

DEFAULT_MEMORY_MAX_BYTES = 64 * 1024 * 1024
# What one entry costs beyond its two strings: the OrderedDict link and slot, the tuple
# and the float. Counted so that many tiny entries cannot exceed the cap either.
ENTRY_OVERHEAD_BYTES = 200


class Cache(Protocol):
    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, ttl_s: int) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def publish(self, channel: str, message: str) -> None: ...

    def subscribe(self, channel: str) -> AsyncIterator[str | None]: ...

    async def ping(self) -> bool: ...

    @property
    def shared(self) -> bool:
        """Whether other processes see what this one writes (events cross processes)."""
        ...

    async def set_if_newer(self, key: str, value: str, version: int, ttl_s: int) -> bool:
        """Store `value` (a JSON object with a `version` field) unless the stored one is
        newer; True if stored. Ties overwrite: the same version holds the same state."""
        ...


class CircuitBreaker:
    """Opens after `failures` consecutive errors; lets one call through after `reset_s`."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic):
        self._threshold = failures
        self._reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def is_open(self) -> bool:
        if self._opened_at is None:
            return False
        return self._clock() - self._opened_at < self._reset_s

    @property
    def healthy(self) -> bool:
        """False from the first failed call until a call succeeds again (open or not)."""
        return self._failures == 0

    async def call(self, operation: Callable[[], Awaitable[T]], fallback: T) -> T:
        if self.is_open:
            return fallback
        try:
            result = await operation()
        except Exception as exc:
            self._failures += 1
            if self._failures >= self._threshold:
                if self._opened_at is None or not self.is_open:
                    log.warning("redis_breaker_open", error=repr(exc), failures=self._failures)
                self._opened_at = self._clock()
            return fallback
        if self._failures:
            log.info("redis_breaker_closed")
        self._failures = 0
        self._opened_at = None
        return result


class RedisCache:
    def __init__(self, url: str, *, timeout_s: float, breaker: CircuitBreaker) -> None:
        import redis.asyncio as redis

        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True
        )
        # Subscriptions block on reads by design; they poll with their own timeout instead.
        self._subscriber = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, decode_responses=True
        )
        self._breaker = breaker

    @property
    def shared(self) -> bool:
        return True

    @property
    def available(self) -> bool:
        """Whether the last call reached Redis (False while the breaker is open)."""
        return self._breaker.healthy

    async def get(self, key: str) -> str | None:
        async def read() -> str | None:
            value = await self._client.get(key)
            return None if value is None else str(value)

        return await self._breaker.call(read, None)

    async def set(self, key: str, value: str, ttl_s: int) -> None:
        await self._breaker.call(lambda: self._client.set(key, value, ex=ttl_s), None)

    async def delete(self, key: str) -> None:
        await self._breaker.call(lambda: self._client.delete(key), None)

    async def publish(self, channel: str, message: str) -> None:
        await self._breaker.call(lambda: self._client.publish(channel, message), None)

    async def ping(self) -> bool:
        async def check() -> bool:
            return bool(await self._client.ping())

        return await self._breaker.call(check, False)

    async def subscribe(self, channel: str) -> AsyncIterator[str | None]:
        """Messages on `channel`; `None` every second of silence (and while Redis is down)."""
        pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            while True:
                message = await pubsub.get_message(timeout=1.0)
                yield None if message is None else str(message["data"])
        except Exception as exc:  # Redis went away mid-stream: the caller falls back to polling
            log.warning("redis_subscription_lost", channel=channel, error=repr(exc))
            while True:
                await asyncio.sleep(1.0)
                yield None
        finally:
            with contextlib.suppress(Exception):  # closing a dead connection may fail too
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._client.aclose()
        await self._subscriber.aclose()

    async def set_if_newer(self, key: str, value: str, version: int, ttl_s: int) -> bool:
        # Compare and write in one script: two writers cannot interleave between them.
        async def write() -> bool:
            stored = await self._client.eval(_SET_IF_NEWER, 1, key, value, str(version), str(ttl_s))
            return bool(stored)

        return await self._breaker.call(write, False)


class MemoryCache:
    """One process's cache: enough for a single ingress; events do not cross processes.

    Values live in an LRU capped at `max_bytes` (keys, values and a per-entry overhead,
    counted as Python holds them); the least recently used entries are evicted first, and
    a value larger than the whole cap is not kept at all.
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_MEMORY_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.max_bytes = max_bytes
        self._bytes = 0
        # key -> (value, expires_at, size in bytes), least recently used first
        self._values: OrderedDict[str, tuple[str, float, int]] = OrderedDict()
        self._channels: dict[str, set[asyncio.Queue[str]]] = {}

    @property
    def shared(self) -> bool:
        return False

    @property
    def bytes_used(self) -> int:
        """What the stored entries take, by the same measure as `max_bytes`."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._values)

    async def get(self, key: str) -> str | None:
        hit = self._values.get(key)
        if hit is None:
            return None
        if hit[1] < self._clock():
            self._drop(key)
            return None
        self._values.move_to_end(key)
        return hit[0]

    async def set(self, key: str, value: str, ttl_s: int) -> None:
        self._drop(key)
        size = sys.getsizeof(key) + sys.getsizeof(value) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return  # would evict everything else and still not fit
        while self._bytes + size > self.max_bytes:
            self._evict_least_recent()
        self._values[key] = (value, self._clock() + ttl_s, size)
        self._bytes += size

    async def delete(self, key: str) -> None:
        self._drop(key)

    def _drop(self, key: str) -> None:
        entry = self._values.pop(key, None)
        if entry is not None:
            self._bytes -= entry[2]

    def _evict_least_recent(self) -> None:
        _, (_, _, size) = self._values.popitem(last=False)
        self._bytes -= size

    async def publish(self, channel: str, message: str) -> None:
        for queue in self._channels.get(channel, ()):
            queue.put_nowait(message)

    async def subscribe(self, channel: str) -> AsyncIterator[str | None]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._channels.setdefault(channel, set()).add(queue)
        try:
            while True:
                try:
                    yield await asyncio.wait_for(queue.get(), 1.0)
                except TimeoutError:
                    yield None
        finally:
            self._channels[channel].discard(queue)

    async def ping(self) -> bool:
        return True

    async def set_if_newer(self, key: str, value: str, version: int, ttl_s: int) -> bool:
        # One event loop and no await between the read and the write: nothing interleaves.
        current = await self.get(key)
        if current is not None and _version_of(current) > version:
            return False
        await self.set(key, value, ttl_s)
        return True


# KEYS[1]: the key; ARGV: value, its version, TTL in seconds. An unreadable stored value
# counts as older, so a corrupt entry is replaced rather than kept forever.
_SET_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and type(decoded) == 'table' and tonumber(decoded['version'])
     and tonumber(decoded['version']) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""


def _version_of(value: str) -> int:
    """The `version` of a stored JSON object; -1 when it has none (it is then replaced)."""
    try:
        decoded = json.loads(value)
        return int(decoded["version"]) if isinstance(decoded, dict) else -1
    except (ValueError, KeyError, TypeError):
        return -1


def create_cache(
    settings: RedisSettings, *, memory_max_bytes: int = DEFAULT_MEMORY_MAX_BYTES
) -> Cache:
    """Redis behind a circuit breaker when a URL is configured, else this process's memory."""
    if settings.url is None:
        return MemoryCache(memory_max_bytes)
    breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s)
    return RedisCache(
        settings.url.get_secret_value(), timeout_s=settings.timeout_s, breaker=breaker
    )


class FallbackCache:
    """Redis while it answers, this process's LRU while it does not (get and set only).

    Only for values any process would compute identically (transcripts of given audio):
    serving one from a local copy is never stale. Not a `Cache`: status and events must
    not fall back to one process's memory.
    """

    def __init__(self, primary: RedisCache, fallback: MemoryCache) -> None:
        self.primary = primary
        self.fallback = fallback

    async def get(self, key: str) -> str | None:
        value = await self.primary.get(key)
        if self.primary.available:
            return value
        return await self.fallback.get(key)

    async def set(self, key: str, value: str, ttl_s: int) -> None:
        await self.primary.set(key, value, ttl_s)
        if not self.primary.available:
            await self.fallback.set(key, value, ttl_s)
