"""The exact L1 cache: an in-process LRU (embedded default) or Redis (shared by replicas).

Both backends store opaque bytes (a serialized ``CachedEntry``) under the L1 key and expire
them after ``cache_ttl_secs``. A failing backend raises ``TierUnavailable("redis", ...)``;
the cascade turns that into a miss, so an outage costs money, never availability.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from reflex.settings import L1Settings
from reflex.tiers import TierUnavailable


class L1Cache(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes) -> None: ...

    async def check(self) -> None:
        """Raise TierUnavailable unless the backend answers (used by /ready)."""

    async def close(self) -> None: ...


class MemoryL1:
    """LRU bounded by entry count, with the same TTL as Redis entries.

    Runs on the event loop only, so it needs no lock.
    """

    name = "memory"

    def __init__(self, capacity: int, ttl_secs: float) -> None:
        self._capacity = capacity
        self._ttl = ttl_secs
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        if item is None:
            return None
        expires_at, value = item
        if expires_at <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes) -> None:
        self._entries[key] = (time.monotonic() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()


class RedisL1:
    """Redis with a TTL per entry, short socket timeouts and no client-side retries.

    During an outage every request would otherwise pay the connect timeout; after a failure
    the backend is skipped for ``retry_secs`` (requests go straight upstream), then tried
    again, so recovery needs no operator. ``/ready`` pings regardless of that pause.
    """

    name = "redis"
    _PREFIX = "reflex:l1:"

    def __init__(self, url: str, *, ttl_secs: int, timeout_secs: float, retry_secs: float) -> None:
        self._ttl = ttl_secs
        self._retry_secs = retry_secs
        self._down_until = 0.0
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_secs,
            socket_connect_timeout=timeout_secs,
            # redis-py retries connection errors 3x with backoff by default: during an outage
            # that multiplies the latency each request pays before falling back to upstream.
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )

    def _guard(self) -> None:
        if time.monotonic() < self._down_until:
            raise TierUnavailable(self.name, "unavailable", "paused after a recent failure")

    def _failed(self, exc: Exception) -> TierUnavailable:
        self._down_until = time.monotonic() + self._retry_secs
        reason = "timeout" if isinstance(exc, (TimeoutError,)) or "Timeout" in type(exc).__name__ else "unavailable"
        return TierUnavailable(self.name, reason, type(exc).__name__)

    async def get(self, key: str) -> bytes | None:
        self._guard()
        try:
            value = await self._client.get(self._PREFIX + key)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed(exc) from exc
        return value if value is None else bytes(value)

    async def set(self, key: str, value: bytes) -> None:
        self._guard()
        try:
            await self._client.set(self._PREFIX + key, value, ex=self._ttl)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed(exc) from exc

    async def check(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise TierUnavailable(self.name, "unavailable", type(exc).__name__) from exc
        self._down_until = 0.0  # it answers again: stop skipping it before the pause ends

    async def close(self) -> None:
        await self._client.aclose()


def open_l1(settings: L1Settings, *, ttl_secs: int) -> L1Cache:
    if settings.redis_url is not None:
        return RedisL1(
            settings.redis_url.get_secret_value(),
            ttl_secs=ttl_secs,
            timeout_secs=settings.redis_timeout_ms / 1000,
            retry_secs=settings.redis_retry_secs,
        )
    return MemoryL1(settings.l1_capacity, ttl_secs)
