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

from reflex.config import Settings
from services.gateway.metrics import GatewayMetrics
from services.gateway.tiers import Embedder, L2Candidate, L2Store, TierUnavailable, Verifier

log = logging.getLogger("reflex.gateway")

# Any short text will do: only the length of its vector is used.
_PROBE_TEXT = "dimension probe"


class LazyL2Store:
    """An ``L2Store`` that opens the real one (``services.gateway.l2.open_l2_store``) on
    first use, with the dimension of the first vector it sees or of a probe embedding."""

    def __init__(self, settings: Settings, embedder: Embedder) -> None:
        self._settings = settings
        self._embedder = embedder
        self._store: L2Store | None = None
        self._lock = asyncio.Lock()

    async def _open(self, dimension: int | None) -> L2Store:
        if self._store is not None:
            return self._store
        async with self._lock:
            if self._store is None:
                if dimension is None:
                    vectors = await self._embedder.embed([_PROBE_TEXT], timeout=self._settings.embedder_timeout_ms / 1000)
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
        self, *, tenant: str, model: str, context_hash: str, vector: Sequence[float], top_k: int, min_similarity: float
    ) -> list[L2Candidate]:
        store = await self._open(len(vector))
        return await store.search(
            tenant=tenant, model=model, context_hash=context_hash, vector=vector, top_k=top_k, min_similarity=min_similarity
        )

    async def upsert(
        self,
        *,
        entry_id: str,
        tenant: str,
        model: str,
        context_hash: str,
        question: str,
        vector: Sequence[float],
        entry: bytes,
        ttl_secs: int,
    ) -> None:
        store = await self._open(len(vector))
        await store.upsert(
            entry_id=entry_id, tenant=tenant, model=model, context_hash=context_hash,
            question=question, vector=vector, entry=entry, ttl_secs=ttl_secs,
        )

    async def check(self) -> None:
        store = await self._open(None)
        await store.check()

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()


def grpc_clients(
    settings: Settings, metrics: GatewayMetrics, *, embedder: bool, verifier: bool
) -> tuple[Embedder | None, Verifier | None]:
    """gRPC clients for the services named by REFLEX_EMBEDDER_URL / REFLEX_VERIFIER_URL
    (only those asked for: injected tiers are not duplicated)."""
    from services.gateway.model_clients import GrpcEmbedder, GrpcVerifier, ServerTiming

    def on_timing(component: str, timing: ServerTiming) -> None:
        metrics.model_server_seconds.labels(component, "queue").observe(timing.queue_s)
        metrics.model_server_seconds.labels(component, "tokenize").observe(timing.tokenize_s)
        metrics.model_server_seconds.labels(component, "inference").observe(timing.inference_s)

    built_embedder = GrpcEmbedder.from_settings(settings, on_timing=on_timing) if embedder and settings.embedder_url else None
    built_verifier = GrpcVerifier.from_settings(settings, on_timing=on_timing) if verifier and settings.verifier_url else None
    return built_embedder, built_verifier
