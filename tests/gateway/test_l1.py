"""Both L1 backends through the same tests, plus Redis going away and coming back under a
running gateway (a redis-server of the test's own, stopped and restarted on the same port)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from services.gateway.l1 import L1Cache, MemoryL1, RedisL1
from reflex.tiers import TierUnavailable
from tests.gateway.conftest import RunningGateway
from tests.support.fake_upstream import FakeUpstream
from tests.support.redis_server import RedisServer


@pytest.fixture
async def l1(l1_backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., L1Cache]]:
    made: list[L1Cache] = []

    def make(capacity: int = 100, ttl: int = 60) -> L1Cache:
        if l1_backend == "memory":
            cache: L1Cache = MemoryL1(capacity, ttl)
        else:
            redis: RedisServer = request.getfixturevalue("redis_server")
            redis.flushall()
            cache = RedisL1(redis.url, ttl_secs=ttl, timeout_secs=0.5, retry_secs=0)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.close()


async def test_get_set_roundtrip_and_miss(l1: Callable[..., L1Cache]) -> None:
    cache = l1()
    assert await cache.get("k1") is None
    await cache.set("k1", b"\x00value\xff")
    assert await cache.get("k1") == b"\x00value\xff"
    await cache.set("k1", b"v2")  # overwrite
    assert await cache.get("k1") == b"v2"
    await cache.check()


async def test_entries_expire_after_the_ttl(l1: Callable[..., L1Cache]) -> None:
    cache = l1(ttl=1)
    await cache.set("k", b"v")
    assert await cache.get("k") == b"v"
    await asyncio.sleep(1.3)  # waiting past the TTL, not measuring anything
    assert await cache.get("k") is None


async def test_memory_l1_evicts_least_recently_used() -> None:
    cache = MemoryL1(capacity=2, ttl_secs=60)
    await cache.set("a", b"1")
    await cache.set("b", b"2")
    assert await cache.get("a") == b"1"  # a is now the most recent
    await cache.set("c", b"3")
    assert await cache.get("b") is None
    assert await cache.get("a") == b"1" and await cache.get("c") == b"3"
    assert len(cache) == 2


async def test_redis_entries_carry_the_ttl(redis_server: RedisServer) -> None:
    redis_server.flushall()
    cache = RedisL1(redis_server.url, ttl_secs=3600, timeout_secs=0.5, retry_secs=0)
    await cache.set("k", b"v")
    ttl = await cache._client.ttl("reflex:l1:k")
    assert 0 < ttl <= 3600
    await cache.close()


async def test_redis_l1_raises_tier_unavailable_when_down_and_recovers() -> None:
    with RedisServer() as redis:
        cache = RedisL1(redis.url, ttl_secs=60, timeout_secs=0.3, retry_secs=0)
        await cache.set("k", b"v")
        redis.stop()
        with pytest.raises(TierUnavailable) as caught:
            await cache.get("k")
        assert caught.value.component == "redis"
        with pytest.raises(TierUnavailable):
            await cache.check()
        redis.start()
        await cache.check()
        assert await cache.get("k") is None  # a fresh server: the entry is gone, the client works
        await cache.set("k", b"again")
        assert await cache.get("k") == b"again"
        await cache.close()


def test_gateway_survives_redis_going_down_and_coming_back(
    start_gateway: Callable[..., RunningGateway], fake_upstream: FakeUpstream
) -> None:
    with RedisServer() as redis:
        gateway = start_gateway("redis", redis_url=redis.url, redis_retry_secs=0.2)
        client = gateway.sync_client()
        http = httpx.Client(base_url=gateway.url)

        def ask(content: str) -> str:
            raw = client.chat.completions.with_raw_response.create(
                model="fake-model", messages=[{"role": "user", "content": content}]
            )
            return raw.headers["x-reflex-status"]

        assert http.get("/ready").status_code == 200
        assert ask("before") == "miss"
        gateway.flush()
        assert ask("before") == "hit-l1-exact"
        assert redis.keys()  # the entry really is in Redis

        redis.stop()
        ready = http.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["failing"] == ["redis"]
        assert ask("before") == "miss"  # served from upstream, not an error
        assert ask("during") == "miss"
        gateway.flush()
        calls_during = fake_upstream.chat_count
        assert calls_during == 3

        redis.start()  # same port, empty
        assert http.get("/ready").status_code == 200
        assert ask("after") == "miss"
        gateway.flush()
        assert ask("after") == "hit-l1-exact"
        assert fake_upstream.chat_count == calls_during + 1
        metrics = http.get("/metrics").text
        assert 'reflex_gateway_tier_failures_total{component="redis"' in metrics
        http.close()


async def test_redis_gets_of_one_loop_turn_go_as_one_mget(redis_server: RedisServer) -> None:
    """Concurrent lookups share a round trip: one MGET per turn of the event loop, each caller
    getting its own value (or None), and a lone get is not held back."""
    redis_server.flushall()
    cache = RedisL1(redis_server.url, ttl_secs=60, timeout_secs=0.5, retry_secs=0)
    try:
        for i in range(0, 20, 2):
            await cache.set(f"k{i}", f"v{i}".encode())
        client = redis_server.client()
        client.config_resetstat()
        values = await asyncio.gather(*(cache.get(f"k{i}") for i in range(20)))
        assert values == [f"v{i}".encode() if i % 2 == 0 else None for i in range(20)]
        stats = client.info("commandstats")
        assert stats["cmdstat_mget"]["calls"] == 1 and "cmdstat_get" not in stats
        assert await cache.get("k4") == b"v4"  # alone: a batch of one
        assert client.info("commandstats")["cmdstat_mget"]["calls"] == 2
    finally:
        await cache.close()


async def test_a_failed_mget_fails_every_get_of_its_batch() -> None:
    cache = RedisL1("redis://127.0.0.1:1/0", ttl_secs=60, timeout_secs=0.2, retry_secs=30)
    try:
        results = await asyncio.gather(*(cache.get(f"k{i}") for i in range(5)), return_exceptions=True)
        assert all(isinstance(r, TierUnavailable) and r.component == "redis" for r in results)
        with pytest.raises(TierUnavailable, match="paused"):  # then the outage pause, as for a GET
            await cache.get("k0")
    finally:
        await cache.close()
