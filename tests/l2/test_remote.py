"""What only the remote backend has: the server may be unreachable, and open_l2_store picks it
when REFLEX_QDRANT_URL is set."""

from __future__ import annotations

import socket

import pytest
from qdrant_client import AsyncQdrantClient

from reflex.settings import L2Settings
from services.gateway.l2 import RemoteL2Store, open_l2_store
from reflex.tiers import TierUnavailable
from tests.l2.support import DIM


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released), so connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_an_unreachable_server_is_reported_as_unavailable_at_open() -> None:
    # check_compatibility=False: the client's version probe runs on a thread of its own and would
    # warn after this test has ended; what we check is our own classification of the failure.
    client = AsyncQdrantClient(url=f"http://127.0.0.1:{closed_port()}", check_compatibility=False)
    with pytest.raises(TierUnavailable) as err:
        await RemoteL2Store.open(client, "reflex", DIM)
    assert (err.value.component, err.value.reason) == ("l2", "unavailable")


async def test_open_l2_store_uses_the_server_when_its_url_is_set() -> None:
    env = L2Settings()
    if not env.qdrant_url:
        pytest.skip("REFLEX_QDRANT_URL is not set: no Qdrant server to test against")
    settings = env.model_copy(update={"collection": "reflex-test-open"})
    store = await open_l2_store(settings, DIM)
    try:
        assert isinstance(store, RemoteL2Store)
        await store.check()
    finally:
        await store.close()
        admin = AsyncQdrantClient(
            url=env.qdrant_url, api_key=env.qdrant_api_key.get_secret_value() if env.qdrant_api_key else None
        )
        await admin.delete_collection("reflex-test-open")
        await admin.close()
