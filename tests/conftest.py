"""Suite-wide fixtures: the real parts that several test packages share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One throwaway redis-server for the session (tests that stop Redis start their own)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def fake_upstream(fake_upstream_server: FakeUpstream) -> FakeUpstream:
    """The session's fake provider with its call log and failure queue emptied."""
    fake_upstream_server.reset()
    return fake_upstream_server
