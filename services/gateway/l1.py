"""The exact L1 cache: an in-process LRU (embedded default) or Redis (shared by replicas).

Both backends store opaque bytes (a serialized ``CachedEntry``) under the L1 key and expire
them after ``cache_ttl_secs``. A failing backend raises ``TierUnavailable("redis", ...)``;
the cascade turns that into a miss, so an outage costs money, never availability.

Invalidation needs to find a tenant's entries, but an L1 key is a hash and a value carries no
tenant, so each write also records its ``L1Tags`` (tenant, model, context hash) in an index:

- memory: a side index (key -> tags, tenant -> keys), updated on every set, eviction and expiry,
  so it never holds a key the LRU dropped;
- Redis: one set per tenant (``reflex:l1:tenant:<id>``, members ``[key, model, context]``), added
  in the same pipeline as the SET and given the entry TTL on each write, plus a set of tenants.
  A SCAN by prefix would need the tenant inside every key, which would change every L1 key (and
  orphan the entries already stored); a set costs one SADD per write and makes invalidating a
  tenant O(its entries) instead of O(the keyspace). Members of entries that expired are dropped
  whenever the set is read (invalidation, stats); an idle tenant's set expires with its entries.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from reflex.entry import CachedEntry
from reflex.settings import L1Settings
from reflex.tiers import TierUnavailable
from services.gateway.l1_near import NearCache
from services.gateway.selection import Selection


@dataclass(frozen=True, slots=True)
class L1Tags:
    """What the L1 index records about an entry, so invalidation can find it."""

    tenant: str
    model: str | None = None
    context_hash: str | None = None


@dataclass(frozen=True, slots=True)
class L1Item:
    """One indexed L1 entry, as invalidation and stats see it."""

    key: str
    tags: L1Tags
    value: bytes

    def matches(self, selection: Selection, now: float) -> bool:
        t = self.tags
        created_at, question = 0.0, None
        if selection.needs_entry:
            try:
                entry = CachedEntry.from_bytes(self.value)
            except (ValueError, KeyError, TypeError):
                entry = None  # unreadable entries are never served: any invalidation may take them
            if entry is not None:
                created_at, question = entry.created_at, entry.question
            elif selection.question_contains is not None:
                question = selection.question_contains
        return selection.matches(tenant=t.tenant, model=t.model, context_hash=t.context_hash,
                                 created_at=created_at, question=question, now=now)


class L1Cache(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, *, tags: L1Tags | None = None) -> None: ...

    async def select(self, selection: Selection) -> list[L1Item]:
        """The indexed entries ``selection`` names (entries written without tags are not indexed)."""

    async def delete(self, items: Sequence[L1Item] | Sequence[str]) -> int:
        """Remove entries (items, or bare keys); returns how many were there."""

    async def check(self) -> None:
        """Raise TierUnavailable unless the backend answers (used by /ready)."""

    async def close(self) -> None: ...


class MemoryL1:
    """LRU bounded by entry count and by bytes, with the same TTL as Redis entries.

    Runs on the event loop only, so it needs no lock.
    """

    name = "memory"

    def __init__(self, capacity: int, ttl_secs: float, max_bytes: int | None = None) -> None:
        self._capacity = capacity
        self._ttl = ttl_secs
        # Entry count alone does not bound memory: ten 20 MiB answers are ten entries.
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        # the invalidation index (see the module docstring); only tagged keys are in it
        self._tags: dict[str, L1Tags] = {}
        self._by_tenant: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        if item is None:
            return None
        expires_at, value = item
        if expires_at <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, *, tags: L1Tags | None = None) -> None:
        self._put(key, value, time.monotonic() + self._ttl, tags)

    def _put(self, key: str, value: bytes, expires_at: float, tags: L1Tags | None) -> None:
        self._drop(key)
        if self._max_bytes is not None and len(value) > self._max_bytes:
            return  # larger than the whole budget: it would only evict everything else
        self._entries[key] = (expires_at, value)
        self._bytes += len(value)
        if tags is not None:
            self._tags[key] = tags
            self._by_tenant.setdefault(tags.tenant, set()).add(key)
        while len(self._entries) > self._capacity or (self._max_bytes is not None and self._bytes > self._max_bytes):
            self._drop(next(iter(self._entries)))  # the least recently used

    def _drop(self, key: str) -> bool:
        item = self._entries.pop(key, None)
        self._unindex(key)
        if item is None:
            return False
        self._bytes -= len(item[1])
        return True

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def _unindex(self, key: str) -> None:
        tags = self._tags.pop(key, None)
        if tags is not None:
            keys = self._by_tenant.get(tags.tenant)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_tenant[tags.tenant]

    async def select(self, selection: Selection) -> list[L1Item]:
        now_mono, now = time.monotonic(), time.time()
        keys: Iterable[str] = (
            list(self._by_tenant.get(selection.tenant, ())) if selection.tenant is not None else list(self._tags)
        )
        out = []
        for key in keys:
            item = self._entries.get(key)
            if item is None or item[0] <= now_mono:
                continue
            candidate = L1Item(key, self._tags[key], item[1])
            if candidate.matches(selection, now):
                out.append(candidate)
        return out

    async def delete(self, items: Sequence[L1Item] | Sequence[str]) -> int:
        removed = 0
        for item in items:
            key = item.key if isinstance(item, L1Item) else item
            removed += self._drop(key)
        return removed

    def tenant_counts(self) -> dict[str, int]:
        return {tenant: len(keys) for tenant, keys in self._by_tenant.items()}

    # ------------------------------------------------------------------ snapshots
    def export_entries(self) -> list[tuple[str, bytes, L1Tags | None, float]]:
        """Every live entry as (key, value, tags, expiry in unix seconds), least recently used first,
        so that importing them in order keeps the LRU order. Runs on the event loop: a copy of
        references, no I/O (10k entries take about a millisecond)."""
        now_mono, now = time.monotonic(), time.time()
        return [
            (key, value, self._tags.get(key), now + (expires_at - now_mono))
            for key, (expires_at, value) in self._entries.items()
            if expires_at > now_mono
        ]

    def import_entries(self, entries: Iterable[tuple[str, bytes, L1Tags | None, float]]) -> int:
        now_mono, now = time.monotonic(), time.time()
        count = 0
        for key, value, tags, expires_wall in entries:
            if expires_wall <= now:
                continue
            self._put(key, value, now_mono + (expires_wall - now), tags)
            count += 1
        return count

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0
        self._tags.clear()
        self._by_tenant.clear()


class RedisL1:
    """Redis with a TTL per entry, short socket timeouts and no client-side retries.

    During an outage every request would otherwise pay the connect timeout; after a failure
    the backend is skipped for ``retry_secs`` (requests go straight upstream), then tried
    again, so recovery needs no operator. ``/ready`` pings regardless of that pause.
    """

    name = "redis"
    _PREFIX = "reflex:l1:"
    _TENANT_PREFIX = "reflex:l1-tenant:"  # not under _PREFIX, so it can never equal an entry key
    _TENANTS = "reflex:l1-tenants"

    def __init__(self, url: str, *, ttl_secs: int, timeout_secs: float, retry_secs: float,
                 near_cache_bytes: int = 0, near_cache_secs: float = 60.0) -> None:
        self._ttl = ttl_secs
        self._retry_secs = retry_secs
        self._down_until = 0.0
        # gets waiting for this loop turn's MGET, and the MGETs in flight (see get)
        self._batch: list[tuple[str, asyncio.Future[bytes | None]]] = []
        self._batches: set[asyncio.Task[None]] = set()
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
        # this replica's invalidated copy of what it read (l1_near.py); 0 bytes: none
        self._near = NearCache(url, self._PREFIX, max_bytes=near_cache_bytes, max_age_secs=near_cache_secs,
                               timeout_secs=timeout_secs, retry_secs=retry_secs) if near_cache_bytes > 0 else None

    @property
    def near(self) -> NearCache | None:
        return self._near

    def _guard(self) -> None:
        if time.monotonic() < self._down_until:
            raise TierUnavailable(self.name, "unavailable", "paused after a recent failure")

    def _failed(self, exc: Exception) -> TierUnavailable:
        self._down_until = time.monotonic() + self._retry_secs
        reason = "timeout" if isinstance(exc, (TimeoutError,)) or "Timeout" in type(exc).__name__ else "unavailable"
        return TierUnavailable(self.name, reason, type(exc).__name__)

    async def get(self, key: str) -> bytes | None:
        """One key, fetched with every other get of the same event-loop turn in one MGET.

        Under load, many requests reach their L1 lookup in one turn of the loop (each read
        of the sockets starts several handlers). A GET each would cost each of them a
        command of redis-py's (pool, retry wrapper, parser: 22% of an L1 hit's time, py-spy)
        and a pooled connection of its own; one MGET per turn costs one. A lone request
        waits for nothing: its batch of one is sent on the next turn of the loop.
        """
        self._guard()
        near = self._near
        if near is not None:
            kept = near.get(key)
            if kept is not None:
                return kept
            near.start()
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._batch.append((key, future))
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_soon(self._send_batch)
        return await future

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.get_running_loop().create_task(self._mget(batch))
        self._batches.add(task)  # a reference until done, as asyncio requires
        task.add_done_callback(self._batches.discard)

    async def _mget(self, batch: list[tuple[str, asyncio.Future[bytes | None]]]) -> None:
        near = self._near
        token = near.reading(key for key, _ in batch) if near is not None else None
        try:
            values = await self._client.mget([self._PREFIX + key for key, _ in batch])
        except (RedisError, OSError, TimeoutError) as exc:
            if near is not None:
                near.abandon((key for key, _ in batch), token)
            failure = self._failed(exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            return
        except BaseException as exc:  # cancelled at shutdown, or a bug: never leave a caller waiting
            if near is not None:
                near.abandon((key for key, _ in batch), token)
            for _, future in batch:
                if not future.done():
                    future.set_exception(TierUnavailable(self.name, "error", type(exc).__name__))
            raise
        for (key, future), value in zip(batch, values, strict=True):
            value = value if value is None else bytes(value)
            if near is not None:
                near.offer(key, value, token)
            if not future.done():  # the caller may have left (cancelled) meanwhile
                future.set_result(value)

    async def set(self, key: str, value: bytes, *, tags: L1Tags | None = None) -> None:
        self._guard()
        if self._near is not None:
            self._near.drop(key)  # this replica reads its own write (the invalidation follows)
        try:
            if tags is None:
                await self._client.set(self._PREFIX + key, value, ex=self._ttl)
                return
            index = self._TENANT_PREFIX + tags.tenant
            # One round trip; not a MULTI: an index member without its entry is dropped when read.
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(self._PREFIX + key, value, ex=self._ttl)
                pipe.sadd(index, orjson.dumps([key, tags.model, tags.context_hash]))
                pipe.expire(index, self._ttl)
                pipe.sadd(self._TENANTS, tags.tenant)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed(exc) from exc

    async def select(self, selection: Selection) -> list[L1Item]:
        """Administrative: not guarded by the outage pause, and errors are raised as TierUnavailable."""
        try:
            if selection.tenant is not None:
                tenants = [selection.tenant]
            else:
                tenants = [t.decode() for t in await self._client.smembers(self._TENANTS)]
            out: list[L1Item] = []
            now = time.time()
            for tenant in tenants:
                index = self._TENANT_PREFIX + tenant
                members = list(await self._client.smembers(index))
                if not members:
                    await self._client.srem(self._TENANTS, tenant)
                    continue
                stale = []
                for start in range(0, len(members), 500):
                    chunk = members[start:start + 500]
                    parsed = [orjson.loads(m) for m in chunk]
                    values = await self._client.mget([self._PREFIX + p[0] for p in parsed])
                    for member, (key, model, context), value in zip(chunk, parsed, values, strict=True):
                        if value is None:
                            stale.append(member)  # expired (or evicted by maxmemory): forget it
                            continue
                        item = L1Item(key, L1Tags(tenant, model, context), bytes(value))
                        if item.matches(selection, now):
                            out.append(item)
                if stale:
                    await self._client.srem(index, *stale)
            return out
        except (RedisError, OSError, TimeoutError) as exc:
            raise TierUnavailable(self.name, "unavailable", type(exc).__name__) from exc

    async def delete(self, items: Sequence[L1Item] | Sequence[str]) -> int:
        if not items:
            return 0
        if self._near is not None:
            for item in items:
                self._near.drop(item.key if isinstance(item, L1Item) else item)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for item in items:
                    if isinstance(item, L1Item):
                        pipe.delete(self._PREFIX + item.key)
                        t = item.tags
                        pipe.srem(self._TENANT_PREFIX + t.tenant, orjson.dumps([item.key, t.model, t.context_hash]))
                    else:
                        pipe.delete(self._PREFIX + item)
                results = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise TierUnavailable(self.name, "unavailable", type(exc).__name__) from exc
        step = 2 if isinstance(items[0], L1Item) else 1
        return sum(int(r) for r in results[::step])

    async def check(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise TierUnavailable(self.name, "unavailable", type(exc).__name__) from exc
        self._down_until = 0.0  # it answers again: stop skipping it before the pause ends

    async def close(self) -> None:
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
        if self._near is not None:
            await self._near.close()
        await self._client.aclose()


def open_l1(settings: L1Settings, *, ttl_secs: int) -> L1Cache:
    if settings.redis_url is not None:
        return RedisL1(
            settings.redis_url.get_secret_value(),
            ttl_secs=ttl_secs,
            timeout_secs=settings.redis_timeout_ms / 1000,
            retry_secs=settings.redis_retry_secs,
            near_cache_bytes=settings.l1_near_cache_bytes,
            near_cache_secs=settings.l1_near_cache_secs,
        )
    return MemoryL1(settings.l1_capacity, ttl_secs, settings.l1_max_bytes)
