"""The Redis L1's near cache (services/gateway/l1_near.py) against a real redis-server: it
serves what it read without a round trip, and no replica keeps serving an entry that any
replica replaced, deleted or lost to expiry, to a flush, or to a dropped connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from services.gateway.l1 import L1Item, L1Tags, RedisL1
from services.gateway.selection import Selection
from tests.gateway.conftest import RunningGateway
from tests.support.metrics import sample
from tests.support.polling import until
from tests.support.redis_server import RedisServer


def _replica(redis: RedisServer, **kwargs: float) -> RedisL1:
    return RedisL1(redis.url, ttl_secs=int(kwargs.pop("ttl", 60)), timeout_secs=0.5, retry_secs=0.1,
                   near_cache_bytes=1 << 20, near_cache_secs=kwargs.pop("max_age", 60.0))


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[tuple[RedisL1, RedisL1]]:
    redis_server.flushall()
    a, b = _replica(redis_server), _replica(redis_server)
    for replica in (a, b):
        await replica.get("warm-up")  # starts its listener
        await until(lambda r=replica: r.near is not None and r.near.live, "the listener is tracking")
    yield a, b
    await a.close()
    await b.close()


def _mgets(redis: RedisServer) -> int:
    stats = redis.client().info("commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


async def test_a_read_entry_is_served_again_without_asking_redis(
        replicas: tuple[RedisL1, RedisL1], redis_server: RedisServer) -> None:
    a, b = replicas
    await a.set("k", b"v1")
    assert await b.get("k") == b"v1"
    before = _mgets(redis_server)
    assert [await b.get("k") for _ in range(5)] == [b"v1"] * 5
    assert _mgets(redis_server) == before
    assert await b.get("absent") is None and await b.get("absent") is None  # misses are never kept
    assert _mgets(redis_server) == before + 2


async def test_another_replicas_write_and_delete_reach_every_copy(replicas: tuple[RedisL1, RedisL1]) -> None:
    a, b = replicas
    await a.set("k", b"v1", tags=L1Tags("tenant-1"))
    assert await b.get("k") == b"v1"
    await a.set("k", b"v2", tags=L1Tags("tenant-1"))  # a refresh on another replica
    await until(lambda: _eq(b.get("k"), b"v2"), "replica b sees the new value")
    items = await a.select(Selection(tenant="tenant-1"))
    assert [i.key for i in items] == ["k"]
    assert await a.delete(items) == 1  # an admin invalidation on replica a
    await until(lambda: _eq(b.get("k"), None), "replica b forgets the deleted entry")


async def test_a_replicas_own_write_and_delete_hold_at_once(replicas: tuple[RedisL1, RedisL1]) -> None:
    a, _ = replicas
    near = a.near
    assert near is not None
    await a.set("k", b"v1")
    assert await a.get("k") == b"v1" and near.get("k") == b"v1"
    # Each step is looked at before Redis has even seen the write, so no invalidation can be
    # what dropped the copy: the replica did, itself.
    write = asyncio.create_task(a.set("k", b"v2"))
    await asyncio.sleep(0)
    assert near.get("k") is None
    await write
    assert await a.get("k") == b"v2" and near.get("k") == b"v2"
    delete = asyncio.create_task(a.delete([L1Item("k", L1Tags("t"), b"")]))
    await asyncio.sleep(0)
    assert near.get("k") is None
    assert await delete == 1
    assert await a.get("k") is None


async def test_expiry_and_flush_drop_the_copies(replicas: tuple[RedisL1, RedisL1],
                                                redis_server: RedisServer) -> None:
    a, b = replicas
    redis_server.client().set("reflex:l1:short", b"v", px=300)
    assert await b.get("short") == b"v"
    await until(lambda: _eq(b.get("short"), None), "the expired entry is gone from the copy too")
    await a.set("k", b"v")
    assert await b.get("k") == b"v"
    redis_server.client().flushall()
    await until(lambda: _eq(b.get("k"), None), "a flush empties the copy")


async def test_a_read_overtaken_by_an_invalidation_is_not_kept(redis_server: RedisServer) -> None:
    redis_server.flushall()
    replica = _replica(redis_server)
    try:
        await replica.get("warm-up")
        near = replica.near
        assert near is not None
        await until(lambda: near.live, "the listener is tracking")
        token = near.reading(["k"])
        near._invalidate([b"reflex:l1:k"])  # a write landed after Redis answered the read
        near.offer("k", b"old", token)
        assert near.get("k") is None
        token = near.reading(["k"])
        near.offer("k", b"new", token)
        assert near.get("k") == b"new"
    finally:
        await replica.close()


async def test_a_copy_lives_at_most_its_max_age(redis_server: RedisServer) -> None:
    redis_server.flushall()
    replica = _replica(redis_server, max_age=0.3)
    try:
        await replica.get("warm-up")
        await until(lambda: replica.near is not None and replica.near.live, "the listener is tracking")
        await replica.set("k", b"v")
        assert await replica.get("k") == b"v"
        assert replica.near is not None and replica.near.get("k") == b"v"
        await asyncio.sleep(0.4)
        assert replica.near.get("k") is None
    finally:
        await replica.close()


async def test_a_killed_tracking_connection_empties_the_copy_until_tracking_is_back(
        replicas: tuple[RedisL1, RedisL1], redis_server: RedisServer) -> None:
    """Redis sends no invalidation to anyone once the connection holding CLIENT TRACKING is
    gone: the copy must stop being served, and come back only with new tracking."""
    a, b = replicas
    await a.set("k", b"v1")
    assert await b.get("k") == b"v1"
    near = b.near
    assert near is not None
    admin = redis_server.client()
    trackers = [c["id"] for c in admin.client_list() if "t" in c["flags"]]  # flag t: CLIENT TRACKING on
    assert len(trackers) == 2  # one per replica, and only those
    for client_id in trackers:
        admin.client_kill_filter(_id=client_id)
    await until(lambda: not near.live, "replica b notices", timeout=5)
    assert len(near) == 0
    await a.set("k", b"v2")
    assert await b.get("k") == b"v2"
    await until(lambda: near.live, "tracking is back", timeout=5)


async def test_a_redis_that_refuses_client_commands_leaves_the_near_cache_off() -> None:
    """Some managed Redis offerings rename or forbid CLIENT: L1 works as before, uncached."""
    server = RedisServer(extra_args=["--rename-command", "CLIENT", ""]).start()
    replica = _replica(server)
    try:
        await replica.set("k", b"v")
        assert await replica.get("k") == b"v"
        near = replica.near
        assert near is not None and near._task is not None
        await until(near._task.done, "the listener gives up")  # for good: no retry loop against it
        assert not near.live
        assert await replica.get("k") == b"v" and len(near) == 0
    finally:
        await replica.close()
        server.stop()


async def _eq(value: Awaitable[bytes | None], expected: bytes | None) -> bool:
    return await value == expected


def test_the_gateway_reports_its_near_cache(start_gateway: Callable[..., RunningGateway]) -> None:
    """/metrics tells an operator whether the near cache is on and what it holds."""
    with RedisServer() as redis:
        gateway = start_gateway("redis", redis_url=redis.url)
        client = gateway.sync_client()

        def ask() -> str:
            raw = client.chat.completions.with_raw_response.create(
                model="fake-model", messages=[{"role": "user", "content": "near"}])
            return raw.headers["x-reflex-status"]

        def gauges() -> tuple[float, float]:
            return (sample(gateway.url, "reflex_gateway_l1_near_cache_live"),
                    sample(gateway.url, "reflex_gateway_l1_near_cache_entries"))

        assert ask() == "miss"
        gateway.flush()
        assert ask() == "hit-l1-exact"  # read from Redis, and kept
        deadline = time.monotonic() + 5
        while gauges() != (1.0, 1.0):
            assert time.monotonic() < deadline, gauges()
            ask()
            time.sleep(0.05)
        hits = sample(gateway.url, "reflex_gateway_l1_near_cache_hits_total")
        assert ask() == "hit-l1-exact"
        assert sample(gateway.url, "reflex_gateway_l1_near_cache_hits_total") == hits + 1
        redis.stop()
        deadline = time.monotonic() + 5
        while gauges() != (0.0, 0.0):  # no invalidations can arrive: nothing is served from copies
            assert time.monotonic() < deadline, gauges()
            time.sleep(0.05)
