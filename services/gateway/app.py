"""The gateway's app factory.

Each resource — the upstream session, the L1 backend, the semantic tiers, and the state that
ties them together — has its own ``cleanup_ctx`` entry and typed ``web.AppKey``. Cleanup runs
in reverse: pending cache writes finish first, then the tiers, L1 and upstream close.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from reflex.config import Settings
from services.gateway.cascade import Cascade, SemanticTiers
from services.gateway.errors import error_middleware
from services.gateway.handlers import add_routes, bound_inflight, count_requests
from services.gateway.l1 import open_l1
from services.gateway.metrics import GatewayMetrics
from services.gateway.state import L1, METRICS, SETTINGS, STATE, TIERS, UPSTREAM, GatewayState
from services.gateway.tiers import Embedder, L2Store, Verifier
from services.gateway.upstream import open_upstream

log = logging.getLogger("reflex.gateway")


def create_app(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    verifier: Verifier | None = None,
    l2: L2Store | None = None,
) -> web.Application:
    """Build the gateway. Injected tiers are used as they are and stay owned by the caller
    (``reflex serve``, tests); missing ones are built from settings and closed with the app."""
    app = web.Application(
        # aiohttp itself refuses larger bodies (the error middleware renders the 413)
        client_max_size=settings.max_body_bytes,
        middlewares=[count_requests, error_middleware, bound_inflight],
    )
    app[SETTINGS] = settings
    app[METRICS] = GatewayMetrics()

    async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
        upstream = open_upstream(settings)
        app[UPSTREAM] = upstream
        if settings.mock_provider:
            log.info("mock provider: misses are answered locally, nothing is sent upstream")
        yield
        await upstream.close()

    async def l1_ctx(app: web.Application) -> AsyncIterator[None]:
        l1 = open_l1(settings)
        app[L1] = l1
        log.info("L1 backend: %s", l1.name)
        yield
        await l1.close()

    async def tiers_ctx(app: web.Application) -> AsyncIterator[None]:
        owned: list[Embedder | Verifier | L2Store] = []
        app[TIERS] = _semantic_tiers(settings, embedder, verifier, l2, owned)
        yield
        for tier in reversed(owned):
            await tier.close()

    async def state_ctx(app: web.Application) -> AsyncIterator[None]:
        cascade = Cascade(settings, app[L1], app[TIERS], app[METRICS])
        state = GatewayState(settings=settings, cascade=cascade, upstream=app[UPSTREAM], metrics=app[METRICS])
        app[STATE] = state
        yield
        state.draining = True
        await state.drain(timeout=settings.shutdown_grace_secs)

    app.cleanup_ctx.extend([upstream_ctx, l1_ctx, tiers_ctx, state_ctx])
    add_routes(app)
    return app


def _semantic_tiers(
    settings: Settings,
    embedder: Embedder | None,
    verifier: Verifier | None,
    l2: L2Store | None,
    owned: list[Embedder | Verifier | L2Store],
) -> SemanticTiers | None:
    if not settings.semantic:
        log.info("semantic tiers off (REFLEX_SEMANTIC=0): exact L1 only")
        return None
    if embedder is None and settings.embedder_url:
        embedder = _grpc_client("GrpcEmbedder", settings.embedder_url, settings.embedder_timeout_ms)
        owned.append(embedder)
    if verifier is None and settings.verifier_url:
        verifier = _grpc_client("GrpcVerifier", settings.verifier_url, settings.verifier_timeout_ms)
        owned.append(verifier)
    if embedder is None or verifier is None:
        log.info(
            "semantic tiers off: no %s (set REFLEX_EMBEDDER_URL and REFLEX_VERIFIER_URL, or run `reflex serve`); "
            "exact L1 only",
            " and no ".join(n for n, t in (("embedder", embedder), ("verifier", verifier)) if t is None),
        )
        return None
    if l2 is None:
        from services.gateway.l2 import open_l2_store  # the L2 engineer's module; imported only when used

        l2 = open_l2_store(settings)
        owned.append(l2)
    log.info("semantic tiers on: L2 top_k=%d floor=%.2f, L3 threshold=%.2f",
             settings.l2_top_k, settings.l2_min_similarity, settings.reranker_threshold)
    return SemanticTiers(embedder=embedder, verifier=verifier, l2=l2)


def _grpc_client(class_name: str, target: str, timeout_ms: int) -> Embedder | Verifier:
    from services.gateway import model_clients  # imported lazily: grpc stubs are only needed here

    return getattr(model_clients, class_name)(target, timeout_ms=timeout_ms)
