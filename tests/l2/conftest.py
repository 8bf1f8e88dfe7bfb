"""Fixtures for the L2 store suite: every contract test runs against each backend.

- ``edge``: a real Qdrant Edge shard in a temporary directory (the embedded default);
- ``local``: ``RemoteL2Store`` on qdrant-client's local mode, persisted under ``path=`` so the
  restart tests can reopen it;
- ``server``: ``RemoteL2Store`` on the Qdrant server at REFLEX_QDRANT_URL, in a collection of its
  own that is dropped afterwards; skipped when the variable is unset.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import AsyncQdrantClient

from reflex.settings import L2Settings
from services.gateway.l2 import EdgeL2Store, RemoteL2Store
from tests.l2.support import DIM, OpenStore

BACKENDS = ["edge", "local", "server"]


def server_settings() -> L2Settings:
    return L2Settings()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "server" and not server_settings().qdrant_url:
        pytest.skip("REFLEX_QDRANT_URL is not set: no Qdrant server to test against")
    return request.param


@pytest.fixture
async def open_store(backend: str, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """``await open_store(dimension=DIM, **kwargs)`` opens (or reopens) this test's store.

    Calling it again after ``close()`` reopens the same shard / local directory / collection,
    which is how the restart tests work. Stores left open are closed at teardown.
    """
    opened: list[Any] = []
    collection = f"reflex-test-{uuid.uuid4().hex[:12]}"

    async def _open(dimension: int = DIM, **kwargs: Any) -> Any:
        common = {k: kwargs.pop(k) for k in ("oversampling", "timeout_secs", "purge_interval_secs") if k in kwargs}
        # The per-call deadline is the gateway's latency guard, not what these tests check; on a
        # busy CI machine the 1 s default could turn a slow call into a spurious failure.
        common.setdefault("timeout_secs", 30.0)
        if backend == "edge":
            store = await EdgeL2Store.open(tmp_path / "shard", dimension, **common, **kwargs)
        elif kwargs:
            raise TypeError(f"only the edge backend takes {sorted(kwargs)}")
        elif backend == "local":
            client = AsyncQdrantClient(path=str(tmp_path / "qdrant-local"))
            store = await RemoteL2Store.open(client, "reflex", dimension, **common)
        else:
            s = server_settings()
            client = AsyncQdrantClient(
                url=s.qdrant_url, api_key=s.qdrant_api_key.get_secret_value() if s.qdrant_api_key else None
            )
            store = await RemoteL2Store.open(client, collection, dimension, **common)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        await store.close()
    if backend == "server":
        s = server_settings()
        admin = AsyncQdrantClient(
            url=s.qdrant_url, api_key=s.qdrant_api_key.get_secret_value() if s.qdrant_api_key else None
        )
        await admin.delete_collection(collection)
        await admin.close()


@pytest.fixture
async def store(open_store: OpenStore) -> Any:
    return await open_store()
