"""The gateway's app factory.

Each resource — the upstream session, the L1 backend, the semantic tiers, and the state that
ties them together — has its own ``cleanup_ctx`` entry and typed ``web.AppKey``. Cleanup runs
in reverse: pending cache writes finish first, then the tiers, L1 and upstream close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from reflex import tokens
from reflex.settings import GatewaySettings
from reflex.tiers import Embedder, L2Store, ModelClientFactory, Verifier
from services.gateway.admin import add_admin_routes
from services.gateway.cascade import Cascade, SemanticTiers
from services.gateway.handlers import add_routes
from services.gateway.l1 import open_l1
from services.gateway.l2.managed import ManagedL2
from services.gateway.metrics import GatewayMetrics
from services.gateway.middleware import gateway_middleware
from services.gateway.openapi import add_openapi_route
from services.gateway.protocols import all_protocols
from services.gateway.semantic import grpc_clients, timing_recorder
from services.gateway.state import L1, METRICS, STATE, TIERS, UPSTREAM, GatewayState
from services.gateway.upstream import open_upstream

log = logging.getLogger("reflex.gateway")


def create_app(
    settings: GatewaySettings,
    *,
    embedder: Embedder | None = None,
    verifier: Verifier | None = None,
    l2: L2Store | None = None,
    model_clients: ModelClientFactory | None = None,
) -> web.Application:
    """Build the gateway. Injected tiers are used as they are and stay owned by the caller
    (tests); missing ones are built from settings and closed with the app: by ``model_clients``
    first (``reflex serve``'s in-process clients of the models it runs), then over gRPC."""
    app = web.Application(
        # aiohttp itself refuses larger bodies (the error middleware renders the 413)
        client_max_size=settings.http.max_body_bytes,
        middlewares=[gateway_middleware],  # one layer: see middleware.py
    )
    app[METRICS] = GatewayMetrics(max_tenant_series=settings.http.metrics_max_tenants)
    protocols = all_protocols()

    async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
        upstream = open_upstream(settings.upstream, settings.anthropic, protocols)
        app[UPSTREAM] = upstream
        if settings.upstream.mock_provider:
            log.info("mock provider: misses are answered locally, nothing is sent upstream")
        yield
        await upstream.close()

    async def l1_ctx(app: web.Application) -> AsyncIterator[None]:
        l1 = open_l1(settings.l1, ttl_secs=settings.cache.cache_ttl_secs)
        app[L1] = l1
        log.info("L1 backend: %s", l1.name)
        yield
        await l1.close()

    async def tiers_ctx(app: web.Application) -> AsyncIterator[None]:
        owned: list[Embedder | Verifier | L2Store] = []
        app[TIERS] = await _semantic_tiers(settings, app[METRICS], embedder, verifier, l2, model_clients, owned)
        yield
        for tier in reversed(owned):
            await tier.close()

    async def state_ctx(app: web.Application) -> AsyncIterator[None]:
        cascade = Cascade(settings, app[L1], app[TIERS], app[METRICS])
        state = GatewayState(settings=settings, cascade=cascade, upstream=app[UPSTREAM], metrics=app[METRICS],
                             cacheable_paths=frozenset(p.route for p in protocols))
        app[STATE] = state
        yield
        await state.drain(timeout=settings.http.shutdown_grace_secs)

    async def tokens_ctx(app: web.Application) -> AsyncIterator[None]:
        # The o200k vocabulary takes ~0.4 s and ~140 MB to load; do it at start-up on a worker
        # thread rather than on the event loop inside the first hit's accounting.
        await asyncio.to_thread(tokens.preload)
        yield

    app.cleanup_ctx.extend([tokens_ctx, upstream_ctx, l1_ctx, tiers_ctx, state_ctx])
    add_routes(app, protocols)
    add_admin_routes(app)  # admin API, tenant self-service, and the lifecycle (snapshots, idle)
    add_openapi_route(app)  # GET /openapi.json: the document in services/gateway/openapi.json
    return app


async def _semantic_tiers(
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    embedder: Embedder | None,
    verifier: Verifier | None,
    l2: L2Store | None,
    model_clients: ModelClientFactory | None,
    owned: list[Embedder | Verifier | L2Store],
) -> SemanticTiers | None:
    if not settings.cache.semantic:
        log.info("semantic tiers off (REFLEX_SEMANTIC=0): exact L1 only")
        return None
    on_timing = timing_recorder(metrics)
    if model_clients is not None:
        # reflex serve's in-process clients of the models it runs itself; the rest go over gRPC
        local_embedder, local_verifier = model_clients(on_timing)
        owned.extend(t for t in (local_embedder, local_verifier) if t is not None)
        embedder, verifier = embedder or local_embedder, verifier or local_verifier
    if embedder is None or verifier is None:
        built_embedder, built_verifier = grpc_clients(
            settings, on_timing, embedder=embedder is None, verifier=verifier is None
        )
        owned.extend(t for t in (built_embedder, built_verifier) if t is not None)
        embedder = embedder or built_embedder
        verifier = verifier or built_verifier
    if embedder is None or verifier is None:
        missing = [n for n, t in (("embedder", embedder), ("verifier", verifier)) if t is None]
        log.info(
            "semantic tiers off: no %s (set REFLEX_EMBEDDER_URL and REFLEX_VERIFIER_URL, or run `reflex serve`); "
            "exact L1 only",
            " and no ".join(missing),
        )
        return None
    if l2 is None:
        # LazyL2Store plus per-tenant caps and the backend's admin interface (l2/managed.py)
        lazy = ManagedL2(settings.l2, embedder, probe_timeout_secs=settings.models.embedder_timeout_ms / 1000,
                         limits=settings.tenant_limits, metrics=metrics)
        await lazy.open_now()
        owned.append(lazy)
        l2 = lazy
    log.info(
        "semantic tiers on: L2 top_k=%d floor=%.2f, L3 threshold=%.2f",
        settings.l2.top_k, settings.l2.min_similarity, settings.verifier.threshold,
    )
    return SemanticTiers(embedder=embedder, verifier=verifier, l2=l2)
