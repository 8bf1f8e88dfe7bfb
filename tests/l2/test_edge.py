"""What only the embedded backend has: crash recovery from its WAL, the index build that the
engine leaves to us, the single-process lock, and how ``open_l2_store`` picks it."""

from __future__ import annotations

import asyncio
import random
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from reflex.settings import L2Settings
from reflex.tiers import L2Point, L2Scope, TierUnavailable
from services.gateway.l2 import EdgeL2Store, open_l2_store
from tests.l2.support import DIM, unit

SCOPE = L2Scope(tenant="t", model="m", context_hash="c")
SLOW_OK = 30.0  # per-call deadline: generous, a busy CI machine must not fail these tests
REPO_ROOT = Path(__file__).resolve().parents[2]


def random_vectors(n: int, seed: int = 5) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(n)]


async def test_open_l2_store_defaults_to_an_edge_shard_under_storage_path(tmp_path: Path) -> None:
    settings = L2Settings(storage_path=tmp_path, qdrant_url=None, collection="cache")
    store = await open_l2_store(settings, DIM)
    try:
        assert isinstance(store, EdgeL2Store)
        assert (tmp_path / "cache" / "edge_config.json").exists()
        # One process holds a shard: a second open is refused, not silently sharing the WAL.
        with pytest.raises(TierUnavailable):
            await open_l2_store(settings, DIM)
    finally:
        await store.close()


async def test_writes_survive_a_crash_without_close(tmp_path: Path) -> None:
    shard = tmp_path / "shard"
    store = await EdgeL2Store.open(shard, DIM)
    await store.close()
    # A separate process writes and dies without flush or close (os._exit skips every cleanup):
    # what it wrote must come back from the WAL.
    child = textwrap.dedent(
        f"""
        import asyncio, os
        from pathlib import Path
        from reflex.tiers import L2Point, L2Scope
        from services.gateway.l2 import EdgeL2Store

        async def main():
            store = await EdgeL2Store.open(Path({str(shard)!r}), {DIM}, timeout_secs={SLOW_OK})
            await store.upsert(L2Point(entry_id="e" * 64, scope={SCOPE!r}, question="crash?",
                                       vector={unit(0)!r}, entry=b"survived", ttl_secs=3600))
            os._exit(0)

        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", child, cwd=REPO_ROOT)
    assert await proc.wait() == 0

    store = await EdgeL2Store.open(shard, DIM, timeout_secs=SLOW_OK)
    try:
        [hit] = await store.search(SCOPE, unit(0), top_k=5, min_similarity=0.5)
        assert (hit.entry_id, hit.question, hit.entry) == ("e" * 64, "crash?", b"survived")
    finally:
        await store.close()


async def test_indexed_and_quantized_segments_still_answer_exactly(tmp_path: Path) -> None:
    # A 1 KB indexing threshold makes the engine build HNSW + binary quantization on 400 points.
    store = await EdgeL2Store.open(
        tmp_path / "shard", DIM, indexing_threshold_kb=1, optimize_every_points=0, timeout_secs=SLOW_OK
    )
    vectors = random_vectors(400)
    for n, v in enumerate(vectors):
        await store.upsert(
            L2Point(f"{n:064d}", replace(SCOPE, tenant=f"t{n % 2}"), f"q{n}", v, f"e{n}".encode(), ttl_secs=3600)
        )
    assert await store.indexed_vectors_count() == 0
    assert await store.optimize() is True
    assert await store.indexed_vectors_count() > 0

    async def check_all(s: EdgeL2Store) -> None:
        for n in range(0, 400, 9):
            hits = await s.search(replace(SCOPE, tenant=f"t{n % 2}"), vectors[n], top_k=3, min_similarity=0.0)
            assert hits[0].entry_id == f"{n:064d}"
            assert hits[0].similarity == pytest.approx(1.0, abs=1e-4)  # rescored: an exact cosine
            assert all(int(h.entry_id) % 2 == n % 2 for h in hits)

    await check_all(store)
    await store.close()
    reopened = await EdgeL2Store.open(tmp_path / "shard", DIM, indexing_threshold_kb=1, timeout_secs=SLOW_OK)
    try:
        assert await reopened.indexed_vectors_count() > 0
        await check_all(reopened)
    finally:
        await reopened.close()


async def test_enough_writes_trigger_an_index_build(tmp_path: Path) -> None:
    # While a build runs, calls queued behind it wait (past their deadline they report a timeout).
    store = await EdgeL2Store.open(
        tmp_path / "shard", DIM, indexing_threshold_kb=1, optimize_every_points=100, timeout_secs=SLOW_OK
    )
    try:
        for n, v in enumerate(random_vectors(100)):
            await store.upsert(L2Point(f"{n:064d}", SCOPE, question="q", vector=v, entry=b"e", ttl_secs=3600))
        # The build runs behind the 100th write on the store's worker; a later call waits for it.
        assert await store.indexed_vectors_count() > 0
    finally:
        await store.close()
