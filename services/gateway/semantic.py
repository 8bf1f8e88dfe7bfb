"""Building the semantic tiers (embedder, verifier, L2) from settings when none are injected.

L2 needs the embedding dimension before it can open its shard or collection. The gateway
learns it from the embedder itself (one probe embedding), and when the embedder is not up
yet at start-up — common in Kubernetes, where pods start in any order — L2 opens lazily
from the first vector the cascade hands it. Until then a lookup is a plain miss.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from reflex.settings import GatewaySettings, L2Settings
from reflex.tiers import (
    Embedder,
    L2Candidate,
    L2Point,
    L2Scope,
    L2Store,
    ServerTiming,
    TierUnavailable,
    TimingCallback,
    Verifier,
)
from services.gateway.metrics import GatewayMetrics

log = logging.getLogger("reflex.gateway")

# Any short text will do: only the length of its vector is used.
_PROBE_TEXT = "dimension probe"


class LazyL2Store:
    """An ``L2Store`` that opens the real one (``services.gateway.l2.open_l2_store``) on
    first use, with the dimension of the first vector it sees or of a probe embedding."""

    def __init__(self, settings: L2Settings, embedder: Embedder, *, probe_timeout_secs: float) -> None:
        self._settings = settings
        self._probe_timeout = probe_timeout_secs
        self._embedder = embedder
        self._store: L2Store | None = None
        self._lock = asyncio.Lock()

    async def _open(self, dimension: int | None) -> L2Store:
        if self._store is not None:
            return self._store
        async with self._lock:
            if self._store is None:
                if dimension is None:
                    vectors = await self._embedder.embed([_PROBE_TEXT], timeout=self._probe_timeout)
                    dimension = len(vectors[0])
                from services.gateway.l2 import open_l2_store  # the L2 module pulls in qdrant

                self._store = await open_l2_store(self._settings, dimension)
                log.info("L2 store open (dimension %d)", dimension)
            return self._store

    async def open_now(self) -> None:
        """Try to open at start-up; an embedder that is not up yet only delays it."""
        try:
            await self._open(None)
        except TierUnavailable as exc:
            log.warning("L2 not opened at start-up (%s); it opens on the first embedding", exc)

    async def search(
        self, scope: L2Scope, vector: Sequence[float], *, top_k: int, min_similarity: float
    ) -> list[L2Candidate]:
        store = await self._open(len(vector))
        return await store.search(scope, vector, top_k=top_k, min_similarity=min_similarity)

    async def has_entries(self, scope: L2Scope) -> bool:
        store = await self._open(None)
        return await store.has_entries(scope)

    async def upsert(self, point: L2Point) -> None:
        store = await self._open(len(point.vector))
        await store.upsert(point)

    async def check(self) -> None:
        store = await self._open(None)
        await store.check()

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()


def timing_recorder(metrics: GatewayMetrics) -> TimingCallback:
    """The model clients' timing callback: the servers' own account into the gateway's histograms."""

    def on_timing(component: str, timing: ServerTiming) -> None:
        metrics.model_server_seconds.labels(component, "queue").observe(timing.queue_s)
        metrics.model_server_seconds.labels(component, "tokenize").observe(timing.tokenize_s)
        metrics.model_server_seconds.labels(component, "inference").observe(timing.inference_s)

    return on_timing


def grpc_clients(
    settings: GatewaySettings, on_timing: TimingCallback, *, embedder: bool, verifier: bool
) -> tuple[Embedder | None, Verifier | None]:
    """gRPC clients for the services named by REFLEX_EMBEDDER_URL / REFLEX_VERIFIER_URL
    (only those asked for: injected tiers are not duplicated)."""
    from services.gateway.model_clients import GrpcEmbedder, GrpcVerifier

    built_embedder = GrpcEmbedder.from_settings(settings.models, on_timing=on_timing) if embedder and settings.models.embedder_url else None
    built_verifier = GrpcVerifier.from_settings(settings.models, on_timing=on_timing) if verifier and settings.models.verifier_url else None
    return built_embedder, built_verifier
