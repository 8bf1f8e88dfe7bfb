"""The administration and snapshot operations of every L2 backend (embedded Edge shard, qdrant-client
local mode, a server when REFLEX_QDRANT_URL is set): scan by scope, retrieve, delete, export every
live point as stored and import it into another store unchanged, clear."""

from __future__ import annotations

import time
from typing import Any

from services.gateway.l2 import schema
from tests.l2.support import DIM, LOCAL_MODE_WARNINGS, unit
from tests.l2.test_store_contract import SCOPE, entry_id, find, put

pytestmark = LOCAL_MODE_WARNINGS


async def scanned(store: Any, selection: schema.Selection | None = None, page: int = 1000) -> list[schema.StoredPoint]:
    return [p async for batch in store.scan(selection, page=page) for p in batch]


async def test_scan_is_filtered_by_scope_and_carries_the_admin_fields(store: Any) -> None:
    before = time.time()
    await put(store, 1, unit(0))
    await put(store, 2, unit(10), tenant="tenant-b")
    await put(store, 3, unit(20), model="gpt-4o-mini")
    everything = await scanned(store, page=2)  # several pages
    assert sorted(p.entry_id for p in everything) == [entry_id(n) for n in (1, 2, 3)]
    only_a = await scanned(store, schema.Selection(tenant="tenant-a"))
    assert sorted(p.entry_id for p in only_a) == [entry_id(1), entry_id(3)]
    (one,) = await scanned(store, schema.Selection(tenant="tenant-a", model="gpt-4o"))
    assert one.question == "question 1" and one.context_hash == SCOPE.context_hash
    assert before <= one.created_at <= time.time()
    assert one.size_bytes == 4 * DIM + len("question 1") + len(b"entry 1") + 768
    assert one.entry is None  # scans leave the large entry out


async def test_retrieve_and_delete(store: Any) -> None:
    await put(store, 1, unit(0))
    await put(store, 2, unit(5))
    (got,) = await store.retrieve([entry_id(1), entry_id(99)])
    assert got.entry is not None and got.entry.startswith(b"entry 1")
    await store.delete_points([got.point_id])
    assert [c.entry_id for c in await find(store, unit(0))] == [entry_id(2)]


async def test_export_then_import_keeps_ids_vectors_payloads_and_expiry(store: Any) -> None:
    for n in range(7):
        await put(store, n, unit(n * 3))
    await put(store, "expired", unit(1), ttl_secs=1)
    time.sleep(1.05)
    exported = [p async for page in store.export_points(page=3) for p in page]
    assert sorted(p.payload[schema.ENTRY_ID] for p in exported) == [entry_id(n) for n in range(7)]
    await store.clear()
    assert await store.points_count() == 0
    await store.import_points(exported)
    again = {p.point_id: p for page in [x async for x in store.export_points()] for p in page}
    for p in exported:
        assert again[p.point_id].payload == p.payload
        assert again[p.point_id].vector == pytest_approx(p.vector)
    (hit, *_) = await find(store, unit(6))
    assert hit.entry_id == entry_id(2)


def pytest_approx(values: list[float]) -> Any:
    import pytest

    return pytest.approx(values, abs=1e-6)
