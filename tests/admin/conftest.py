from __future__ import annotations

from typing import Any

import pytest

from tests.support.redis_server import RedisServer


@pytest.fixture(params=["memory", "redis"])
def l1_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each admin test runs over both L1 backends: invalidation must reach either index."""
    if request.param == "memory":
        return {"redis_url": None}
    redis: RedisServer = request.getfixturevalue("redis_server")
    redis.flushall()
    return {"redis_url": redis.url}
