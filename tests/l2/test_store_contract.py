"""The L2Store contract, run against every backend (see conftest.py): the embedded Qdrant Edge
shard, qdrant-client's local mode, and a real Qdrant server when REFLEX_QDRANT_URL is set."""

from __future__ import annotations

import asyncio
import inspect
import random
import time
import typing
from dataclasses import replace
from typing import Any

import pytest

from reflex.tiers import L2Point, L2Scope, L2Store, TierUnavailable
from services.gateway.l2 import EdgeL2Store, RemoteL2Store
from services.gateway.semantic import LazyL2Store
from tests.l2.support import DIM, LOCAL_MODE_WARNINGS, OpenStore, unit

pytestmark = LOCAL_MODE_WARNINGS

SCOPE = L2Scope(tenant="tenant-a", model="gpt-4o", context_hash="ctx-1")
PROTOCOL_METHODS = ("search", "has_entries", "upsert", "check", "close")
ALL_BYTES = bytes(range(256)) * 3  # every byte value, so any text-encoding slip shows


def entry_id(n: int | str) -> str:
    return f"{n}".rjust(64, "0")


async def put(store: Any, n: int | str, vector: list[float], *, ttl_secs: int = 3600, **scope: str) -> str:
    """Store entry ``n`` in SCOPE, or in SCOPE with the fields given in ``scope`` changed."""
    eid = entry_id(n)
    await store.upsert(
        L2Point(
            entry_id=eid,
            scope=replace(SCOPE, **scope),
            question=f"question {n}",
            vector=vector,
            entry=f"entry {n}".encode() + ALL_BYTES,
            ttl_secs=ttl_secs,
        )
    )
    return eid


async def find(store: Any, vector: list[float], *, top_k: int = 5, min_similarity: float = 0.0, **scope: str):
    return await store.search(replace(SCOPE, **scope), vector, top_k=top_k, min_similarity=min_similarity)


def _contract(fn: Any) -> tuple[list[tuple[str, Any, Any, Any]], Any]:
    """What a caller relies on in a method: each parameter's name, kind (positional or keyword),
    default and resolved type, in order, and the resolved return type."""
    hints = typing.get_type_hints(fn)
    params = [
        (p.name, p.kind, p.default, hints.get(p.name)) for p in inspect.signature(fn).parameters.values()
    ]
    return params, hints.get("return")


def test_the_signature_check_covers_every_protocol_method() -> None:
    assert [n for n, v in vars(L2Store).items() if inspect.isfunction(v) and not n.startswith("_")] == list(
        PROTOCOL_METHODS
    )


@pytest.mark.parametrize("implementation", [EdgeL2Store, RemoteL2Store, LazyL2Store])
@pytest.mark.parametrize("method", PROTOCOL_METHODS)
def test_signatures_match_the_protocol(implementation: type, method: str) -> None:
    # The Protocol is not runtime-checkable, and an isinstance check would only see the names
    # anyway: compare what a caller of L2Store may pass (positionally or by name) and gets back.
    expected, actual = getattr(L2Store, method), getattr(implementation, method)
    assert inspect.iscoroutinefunction(actual), f"{implementation.__name__}.{method} is not async"
    assert _contract(actual) == _contract(expected), (
        f"{implementation.__name__}.{method}{inspect.signature(actual)} differs from "
        f"L2Store.{method}{inspect.signature(expected)}"
    )


async def test_upsert_then_search_finds_it_with_exact_bytes(store: Any) -> None:
    eid = await put(store, 1, unit(0))
    [hit] = await find(store, unit(20))
    assert hit.entry_id == eid
    assert hit.question == "question 1"
    assert hit.entry == b"entry 1" + ALL_BYTES
    assert hit.similarity == pytest.approx(0.93969, abs=1e-4)  # cos 20 degrees


@pytest.mark.parametrize("field", ["tenant", "model", "context_hash"])
async def test_entries_of_another_scope_are_never_candidates(store: Any, field: str) -> None:
    # The other scope's entry is the exact same vector: only the filter can keep it out.
    mine = await put(store, "mine", unit(30))
    await put(store, "theirs", unit(0), **{field: "other"})
    assert [c.entry_id for c in await find(store, unit(0))] == [mine]
    assert [c.entry_id for c in await find(store, unit(0), **{field: "other"})] == [entry_id("theirs")]
    assert await find(store, unit(0), **{field: "nobody"}) == []


async def test_has_entries_says_whether_a_scope_holds_a_live_entry(store: Any) -> None:
    # what lets a lookup in a new context go upstream without waiting for its embedding
    assert await store.has_entries(SCOPE) is False
    await put(store, "short", unit(0), ttl_secs=1)
    assert await store.has_entries(SCOPE) is True
    for field in ("tenant", "model", "context_hash"):
        assert await store.has_entries(replace(SCOPE, **{field: "other"})) is False, field
    expiry = time.time() + 1
    while time.time() <= expiry:  # an expired entry, not yet purged, is no entry
        await asyncio.sleep(0.1)
    assert await store.has_entries(SCOPE) is False


async def test_results_are_best_first_and_at_most_top_k(store: Any) -> None:
    angles = [50, 10, 70, 30, 0, 60, 20, 40]
    for n, angle in enumerate(angles):
        await put(store, n, unit(angle))
    by_angle = [entry_id(n) for n, _ in sorted(enumerate(angles), key=lambda p: p[1])]

    hits = await find(store, unit(0), top_k=3)
    assert [h.entry_id for h in hits] == by_angle[:3]
    sims = [h.similarity for h in hits]
    assert sims == sorted(sims, reverse=True)

    assert [h.entry_id for h in await find(store, unit(0), top_k=100)] == by_angle


async def test_min_similarity_is_a_floor(store: Any) -> None:
    for n, angle in enumerate([10, 30, 50, 70, 85]):  # cosines .985 .866 .643 .342 .087
        await put(store, n, unit(angle))
    hits = await find(store, unit(0), min_similarity=0.6)
    assert [h.entry_id for h in hits] == [entry_id(0), entry_id(1), entry_id(2)]
    assert all(h.similarity >= 0.6 for h in hits)
    assert await find(store, unit(0), min_similarity=0.99) == []


async def test_storing_the_same_entry_id_again_overwrites(store: Any) -> None:
    await store.upsert(L2Point(entry_id(7), SCOPE, question="old", vector=unit(0), entry=b"old", ttl_secs=3600))
    await store.upsert(L2Point(entry_id(7), SCOPE, question="new", vector=unit(40), entry=b"new", ttl_secs=3600))
    hits = await find(store, unit(0))
    assert [(h.entry_id, h.question, h.entry) for h in hits] == [(entry_id(7), "new", b"new")]
    assert hits[0].similarity == pytest.approx(0.76604, abs=1e-4)  # the new vector's cos 40
    assert await store.points_count() == 1


async def test_expired_entries_are_not_returned_and_get_purged(store: Any) -> None:
    short = await put(store, "short", unit(0), ttl_secs=1)
    long = await put(store, "long", unit(30))
    assert [h.entry_id for h in await find(store, unit(0))] == [short, long]

    expiry = time.time() + 1
    while time.time() <= expiry:  # wait out the one-second TTL on the wall clock the store uses
        await asyncio.sleep(0.1)
    assert [h.entry_id for h in await find(store, unit(0))] == [long]

    assert await store.points_count() == 2  # still stored until purged: the filter hid it
    await store.purge_expired()
    assert await store.points_count() == 1
    assert [h.entry_id for h in await find(store, unit(0))] == [long]


async def test_writes_trigger_a_purge_of_expired_points(open_store: OpenStore) -> None:
    store = await open_store(purge_interval_secs=1.0)
    await put(store, "short", unit(0), ttl_secs=1)
    await asyncio.sleep(1.1)  # past both the TTL and the purge interval
    await put(store, "trigger", unit(30))
    # The purge runs behind the write (not awaited by it); poll until it has happened.
    for _ in range(100):
        if await store.points_count() == 1:
            break
        await asyncio.sleep(0.05)
    assert await store.points_count() == 1
    assert [h.entry_id for h in await find(store, unit(0))] == [entry_id("trigger")]


async def test_entries_survive_a_restart(open_store: OpenStore) -> None:
    store = await open_store()
    eid = await put(store, 1, unit(0))
    await store.close()

    reopened = await open_store()
    [hit] = await find(reopened, unit(0))
    assert (hit.entry_id, hit.entry) == (eid, b"entry 1" + ALL_BYTES)
    await put(reopened, 2, unit(10))  # and it still takes writes
    assert len(await find(reopened, unit(0))) == 2


async def test_check_is_healthy_until_close(store: Any) -> None:
    await store.check()
    await store.close()
    with pytest.raises(TierUnavailable) as err:
        await store.check()
    assert err.value.component == "l2"
    with pytest.raises(TierUnavailable):
        await find(store, unit(0))
    with pytest.raises(TierUnavailable):
        await put(store, 1, unit(0))
    await store.close()  # closing twice is harmless


async def test_a_vector_of_another_dimension_is_refused_as_unavailable(store: Any) -> None:
    await put(store, 1, unit(0))
    with pytest.raises(TierUnavailable) as err:
        await find(store, unit(0, dim=DIM + 1))
    assert err.value.reason == "dimension"
    with pytest.raises(TierUnavailable):
        await put(store, 2, unit(0, dim=DIM - 1))


async def test_reopening_with_another_dimension_fails_at_open(open_store: OpenStore) -> None:
    store = await open_store()
    await put(store, 1, unit(0))
    await store.close()
    with pytest.raises(TierUnavailable):
        await open_store(dimension=DIM * 2)


async def test_concurrent_writes_and_reads_stay_consistent(store: Any) -> None:
    rng = random.Random(3)
    vectors = [[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(120)]

    async def write_then_read(n: int) -> None:
        # What the gateway does on a miss, then on the next identical question.
        eid = await put(store, n, vectors[n], tenant=f"t{n % 3}")
        hits = await find(store, vectors[n], top_k=1, min_similarity=0.99, tenant=f"t{n % 3}")
        assert [(h.entry_id, h.entry) for h in hits] == [(eid, f"entry {n}".encode() + ALL_BYTES)]

    async def read_other(n: int) -> None:
        for hit in await find(store, vectors[n], tenant=f"t{n % 3}"):
            assert int(hit.entry_id) % 3 == n % 3  # never another tenant's entry, even mid-write

    await asyncio.gather(*(write_then_read(n) for n in range(120)), *(read_other(n) for n in range(120)))
    assert await store.points_count() == 120
    for n in range(0, 120, 7):
        [hit] = await find(store, vectors[n], top_k=1, tenant=f"t{n % 3}")
        assert hit.entry_id == entry_id(n)
        assert hit.similarity == pytest.approx(1.0, abs=1e-4)


async def test_store_type_matches_backend(store: Any, backend: str) -> None:
    assert isinstance(store, EdgeL2Store if backend == "edge" else RemoteL2Store)
