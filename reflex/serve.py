"""``reflex serve``: the embedded default, everything on one machine with one command.

The embedder and verifier run in this process as real gRPC servers on loopback ports, and
the gateway reaches them through the same gRPC clients it uses in Kubernetes, so the one
machine exercises exactly the code paths a cluster does. L1 is the in-process LRU unless
REFLEX_REDIS_URL is set; L2 is the embedded Qdrant Edge shard under REFLEX_STORAGE_PATH
unless REFLEX_QDRANT_URL is set. A model service named by REFLEX_EMBEDDER_URL or
REFLEX_VERIFIER_URL is used instead of starting one here.

Ctrl-C (or SIGTERM) stops the gateway first, draining in-flight requests and pending cache
writes, then closes L2 and stops the model servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

from reflex.config import Settings

log = logging.getLogger("reflex.serve")


async def run(settings: Settings, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None)."""
    from services.gateway.main import GatewayServer

    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    async with contextlib.AsyncExitStack() as stack:
        tiers: dict[str, Any] = {}
        if settings.semantic:
            tiers = await _start_semantic_tiers(settings, stack)
        gateway = GatewayServer(settings, **tiers)
        await gateway.start()
        stack.push_async_callback(gateway.stop)  # LIFO: the gateway drains before the tiers close
        base = f"http://{settings.bind_addr}:{gateway.port}/v1"
        log.info(
            "Reflex is serving: point your agent at OPENAI_BASE_URL=%s (upstream %s%s)",
            base,
            settings.upstream_url,
            ", mock provider" if settings.mock_provider else "",
        )
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("stopping: draining in-flight requests for up to %.0f s", settings.shutdown_grace_secs)


async def _start_semantic_tiers(settings: Settings, stack: contextlib.AsyncExitStack) -> dict[str, Any]:
    """Start whatever model service is not given by URL, and open L2 for its dimension."""
    from services.embedder.main import start_embedder_server
    from services.gateway.l2 import open_l2_store
    from services.gateway.model_clients import GrpcEmbedder, GrpcVerifier
    from services.verifier.main import start_verifier_server

    # The two models load concurrently (each on its own worker thread).
    starts: dict[str, Any] = {}
    if not settings.embedder_url:
        starts["embedder"] = start_embedder_server(settings, 0)
    if not settings.verifier_url:
        starts["verifier"] = start_verifier_server(settings, 0)
    results = await asyncio.gather(*starts.values(), return_exceptions=True)
    servers = dict(zip(starts, results, strict=True))
    for server in servers.values():
        if not isinstance(server, BaseException):
            stack.push_async_callback(server.stop)
    for name, server in servers.items():
        if isinstance(server, BaseException):
            raise SystemExit(f"reflex serve: the {name} could not start: {server}") from server

    def target(name: str, url: str | None) -> str:
        return url or f"127.0.0.1:{servers[name].port}"

    embedder = GrpcEmbedder.from_settings(settings, target=target("embedder", settings.embedder_url))
    stack.push_async_callback(embedder.close)
    verifier = GrpcVerifier.from_settings(settings, target=target("verifier", settings.verifier_url))
    stack.push_async_callback(verifier.close)

    tiers: dict[str, Any] = {"embedder": embedder, "verifier": verifier}
    if "embedder" in servers:
        # The dimension is the loaded model's, never a constant; with a remote embedder the
        # gateway opens L2 lazily once it has asked the embedder.
        l2 = await open_l2_store(settings, servers["embedder"].backend.dimension)
        stack.push_async_callback(l2.close)
        tiers["l2"] = l2
    return tiers


def main(argv: list[str], settings: Settings) -> int:
    argparse.ArgumentParser(
        prog="reflex serve",
        description="Gateway, embedder and verifier on one machine (REFLEX_* variables configure it; "
        "see README). Ctrl-C stops everything cleanly.",
    ).parse_args(argv)
    settings.log_effective(log)
    asyncio.run(run(settings))
    return 0
