"""What only the remote backend has: the server may be unreachable, and open_l2_store picks it
when REFLEX_QDRANT_URL is set."""

from __future__ import annotations

import socket

import pytest

from reflex.config import Settings
from services.gateway.l2 import open_l2_store
from services.gateway.tiers import TierUnavailable
from tests.l2.support import DIM


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released), so connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# qdrant-client first asks the server for its version, and warns when it cannot.
@pytest.mark.filterwarnings("ignore:Failed to obtain server version:UserWarning")
async def test_an_unreachable_server_is_reported_as_unavailable_at_open() -> None:
    settings = Settings(qdrant_url=f"http://127.0.0.1:{closed_port()}", qdrant_collection="reflex")
    with pytest.raises(TierUnavailable) as err:
        await open_l2_store(settings, DIM)
    assert (err.value.component, err.value.reason) == ("l2", "unavailable")
