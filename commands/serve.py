"""``reflex serve``: the embedded default, everything on one machine with one command.

The embedder and verifier run in this process as real gRPC servers on loopback ports (health,
warm-up, batching and draining exactly as in Kubernetes). The gateway calls them in process,
straight into their batchers through the servicers' own request functions
(services/model_server/in_process.py: about 2 ms less per model call on 2 cores), or over
those ports with its cluster gRPC clients when REFLEX_SERVE_MODEL_CALLS=grpc. L1 is the
in-process LRU unless REFLEX_REDIS_URL is set; L2 is the embedded Qdrant Edge shard under
REFLEX_STORAGE_PATH unless REFLEX_QDRANT_URL is set. A model service named by
REFLEX_EMBEDDER_URL or REFLEX_VERIFIER_URL is used instead of starting one here (over gRPC).

Ctrl-C (or SIGTERM) stops the gateway first, draining in-flight requests and pending cache
writes, then closes L2 and stops the model servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import Any

from reflex.settings import GatewaySettings, ServeSettings
from reflex.signals import stop_event
from reflex.tiers import Embedder, ModelClientFactory, TimingCallback, Verifier

log = logging.getLogger("reflex.serve")


async def run(settings: ServeSettings, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None)."""
    from services.gateway.main import GatewayServer

    stop = stop or stop_event()
    async with contextlib.AsyncExitStack() as stack:
        gateway_settings, model_clients = settings.gateway, None
        if gateway_settings.cache.semantic:
            gateway_settings, model_clients = await _start_model_services(settings, stack)
        # The gateway builds its model clients (with their timing metrics) and opens L2 for the
        # embedder's dimension exactly as it does in Kubernetes.
        gateway = GatewayServer(gateway_settings, model_clients=model_clients)
        await gateway.start()
        stack.push_async_callback(gateway.stop)  # LIFO: the gateway drains before the models stop
        base = f"http://{gateway_settings.http.bind_addr}:{gateway.port}/v1"
        log.info(
            "Reflex is serving: point your agent at OPENAI_BASE_URL=%s (upstream %s%s)",
            base,
            gateway_settings.upstream.url,
            ", mock provider" if gateway_settings.upstream.mock_provider else "",
        )
        if ready is not None:
            ready.set()
        # a signal, or the gateway's own idle timeout (REFLEX_IDLE_TIMEOUT_SECS): either way it
        # drains, dehydrates when a snapshot location is set, and the process exits 0
        reason = await gateway.wait_for_stop(stop)
        log.info("stopping (%s): draining in-flight requests for up to %.0f s", reason,
                 gateway_settings.http.shutdown_grace_secs)


async def _start_model_services(
    settings: ServeSettings, stack: contextlib.AsyncExitStack
) -> tuple[GatewaySettings, ModelClientFactory | None]:
    """Start in this process each model service not given by URL. Return the gateway's settings
    and its in-process clients' factory, or (REFLEX_SERVE_MODEL_CALLS=grpc) settings naming them."""
    from services.embedder.in_process import InProcessEmbedder
    from services.embedder.main import start_embedder_server
    from services.verifier.in_process import InProcessVerifier
    from services.verifier.main import start_verifier_server

    clients = settings.gateway.models
    # The two models load concurrently (each on its own worker thread).
    starts: dict[str, Any] = {}
    if not clients.embedder_url:
        starts["embedder_url"] = start_embedder_server(settings.models, 0)
    if not clients.verifier_url:
        starts["verifier_url"] = start_verifier_server(settings.models, 0)
    results = await asyncio.gather(*starts.values(), return_exceptions=True)
    servers = dict(zip(starts, results, strict=True))
    for server in servers.values():
        if not isinstance(server, BaseException):
            stack.push_async_callback(server.stop)
    for name, server in servers.items():
        if isinstance(server, BaseException):
            service = name.removesuffix("_url")
            raise SystemExit(f"reflex serve: the {service} could not start: {server}") from server
    if not servers:
        return settings.gateway, None  # both named by URL: the gateway's gRPC clients
    names = " and ".join(name.removesuffix("_url") for name in servers)
    if clients.serve_model_calls == "in-process":
        embedder, verifier = servers.get("embedder_url"), servers.get("verifier_url")
        log.info("the gateway calls the %s in process (REFLEX_SERVE_MODEL_CALLS=in-process)", names)

        def model_clients(on_timing: TimingCallback) -> tuple[Embedder | None, Verifier | None]:
            return (InProcessEmbedder(embedder, on_timing=on_timing) if embedder else None,
                    InProcessVerifier(verifier, on_timing=on_timing) if verifier else None)

        return settings.gateway, model_clients
    # A wildcard bind is reachable on loopback; connect there rather than to 0.0.0.0.
    bind = settings.models.grpc.bind_addr
    host = "127.0.0.1" if bind in ("0.0.0.0", "::", "[::]") else bind
    log.info("the gateway calls the %s over gRPC on %s (REFLEX_SERVE_MODEL_CALLS=grpc)", names, host)
    return settings.gateway.replace(**{name: f"{host}:{server.port}" for name, server in servers.items()}), None


def main(argv: list[str], settings: ServeSettings) -> int:
    argparse.ArgumentParser(
        prog="reflex serve",
        description="Gateway, embedder and verifier on one machine (REFLEX_* variables configure it; "
        "see README). Ctrl-C stops everything cleanly.",
    ).parse_args(argv)
    settings.log_effective(log)
    asyncio.run(run(settings))
    return 0
