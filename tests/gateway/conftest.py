"""Gateway fixtures: a real gateway on a free port (served from a thread so that the sync
``openai`` SDK can call it), over either L1 backend, with injectable semantic tiers.

``start_gateway(embedder=..., verifier=..., l2=...)`` is also the seam for end-to-end tests
through the real gRPC model services: build the clients, pass them in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from reflex.settings import GatewaySettings
from services.gateway.main import GatewayServer
from services.gateway.state import STATE
from tests.support.fake_upstream import FakeUpstream
from tests.support.loop_thread import LoopThread
from tests.support.redis_server import RedisServer

# Tests compare content byte for byte: ask for raw hits whatever REFLEX_RESPONSE_FORMAT says.
RAW = {"X-Reflex-Format": "raw"}


@dataclass
class RunningGateway:
    server: GatewayServer
    thread: LoopThread

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    @property
    def state(self):  # type: ignore[no-untyped-def]
        return self.server.app[STATE]

    def flush(self) -> None:
        """Wait until the background cache writes of the requests made so far are done."""
        self.thread.run(self.server.flush())

    def stop(self) -> None:
        self.thread.run(self.server.stop())

    def sync_client(self, api_key: str = "sk-test-alice", **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.base_url, api_key=api_key, max_retries=0, default_headers=RAW, timeout=30, **kwargs
        )

    def async_client(self, api_key: str = "sk-test-alice", **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.base_url, api_key=api_key, max_retries=0, default_headers=RAW, timeout=30, **kwargs
        )


@pytest.fixture(scope="session")
def server_thread() -> Iterator[LoopThread]:
    thread = LoopThread("gateways")
    yield thread
    thread.close()


@pytest.fixture(params=["memory", "redis"])
def l1_backend(request: pytest.FixtureRequest) -> str:
    """Parametrizes a test over both L1 backends: they must pass the same suite."""
    return str(request.param)


def gateway_settings(upstream: FakeUpstream, redis: RedisServer | None = None, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "upstream_url": upstream.url,
        "port": 0,
        "semantic": False,
        "mock_provider": False,
        "redis_url": redis.url if redis is not None else None,
        "upstream_timeout_secs": 30.0,
    }
    values.update(overrides)
    return GatewaySettings.build(**values)


@pytest.fixture
def start_gateway(
    server_thread: LoopThread, fake_upstream: FakeUpstream, request: pytest.FixtureRequest
) -> Iterator[Callable[..., RunningGateway]]:
    """Factory: start_gateway(l1="memory"|"redis", embedder=, verifier=, l2=, **settings)."""
    started: list[RunningGateway] = []

    def start(l1: str = "memory", *, embedder: Any = None, verifier: Any = None, l2: Any = None, **overrides: Any) -> RunningGateway:
        redis = None
        if l1 == "redis" and "redis_url" not in overrides:
            redis = request.getfixturevalue("redis_server")
            redis.flushall()
        settings = gateway_settings(fake_upstream, redis, **overrides)

        async def make() -> GatewayServer:
            # built on the server thread's loop: the app's resources belong to that loop
            server = GatewayServer(settings, embedder=embedder, verifier=verifier, l2=l2)
            await server.start()
            return server

        gateway = RunningGateway(server_thread.run(make()), server_thread)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(start_gateway: Callable[..., RunningGateway], l1_backend: str) -> RunningGateway:
    """A gateway over the fake upstream, once per L1 backend."""
    return start_gateway(l1_backend)
