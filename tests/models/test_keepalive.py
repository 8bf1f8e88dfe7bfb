"""Idle gRPC channels stay up: the gateway's keepalive pings and the model servers' ping
policy agree (reflex/keepalive.py). With gRPC's server defaults, an idle pinging client gets
GOAWAY "too_many_pings" and its connection (and any live call on it) is dropped; the test runs
the same idle period against both, with the intervals shortened from 30 s to 1 s."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from reflex import keepalive
from services.model_server import grpc_server

PING_MS = 1000
IDLE_S = 6.0  # several ping intervals: past the default policy's strike limit (2)


async def health_server(options: tuple[tuple[str, Any], ...]) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=options)
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def connection_dropped_while_idle(server_options: tuple[tuple[str, Any], ...]) -> bool:
    """Open a channel, make one call, stay idle, and report whether the connection was lost."""
    server, port = await health_server(server_options)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=keepalive.client_options(PING_MS))
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert channel.get_state() is grpc.ChannelConnectivity.READY
        dropped = False
        deadline = asyncio.get_running_loop().time() + IDLE_S
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY), left)
            except TimeoutError:
                break
            dropped = True  # READY -> IDLE/CONNECTING/TRANSIENT_FAILURE: the server hung up
            break
        # whatever happened, a call after the idle period must work (reconnecting if needed)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        return dropped
    finally:
        await channel.close()
        await server.stop(0)


async def test_the_agreed_policy_keeps_an_idle_pinging_channel_up() -> None:
    assert not await connection_dropped_while_idle(keepalive.server_options(PING_MS))


async def test_the_default_server_policy_drops_it() -> None:
    # The control: without the agreed server options the same idle period costs the connection.
    assert await connection_dropped_while_idle(())


async def test_model_servers_are_built_with_the_agreed_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    real_server = grpc.aio.server

    def spy(*args: Any, **kwargs: Any) -> grpc.aio.Server:
        seen.append(kwargs.get("options"))
        return real_server(*args, **kwargs)

    monkeypatch.setattr(grpc_server.grpc.aio, "server", spy)

    class NoModel:
        def __init__(self) -> None:
            raise RuntimeError("no model needed: only the server's options are checked")

    spec = grpc_server.ServiceSpec(name="probe", grpc_service="reflex.probe.v1.Probe", default_port=0,
                                   register=lambda _server, _model_server: None,
                                   load_backend=lambda _settings: NoModel(), warmup_items=())
    from tests.support.models import model_settings

    server: grpc_server.ModelServer[Any] = grpc_server.ModelServer(spec, model_settings())
    await server.start(0)
    try:
        with pytest.raises(RuntimeError):
            await server.wait_ready()
    finally:
        await server.stop(0)
    assert seen and set(keepalive.server_options()) <= set(seen[0])
