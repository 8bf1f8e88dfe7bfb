"""L2: the vector store behind the semantic tier (see ``reflex/tiers.py::L2Store``).

Two backends, one interface, one test suite (``tests/l2/``):

- ``EdgeL2Store`` (default): an embedded Qdrant Edge shard under
  ``REFLEX_STORAGE_PATH / REFLEX_QDRANT_COLLECTION``;
- ``RemoteL2Store``: a Qdrant server or cluster at ``REFLEX_QDRANT_URL``.

The vector dimension is an argument of ``open_l2_store`` rather than something learned on the
first write: the gateway reads it from the embedder's ``Info`` before it serves, so the store and
its index exist before the first search (no "empty until first write" case), and a shard or
collection built for another model fails at start-up with a clear message instead of on a request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reflex.settings import L2Settings
from reflex.tiers import L2Store

if TYPE_CHECKING:
    from services.gateway.l2.edge import EdgeL2Store
    from services.gateway.l2.remote import RemoteL2Store

__all__ = ["EdgeL2Store", "RemoteL2Store", "open_l2_store"]


def __getattr__(name: str) -> Any:
    # The engines (qdrant-edge, qdrant-client: ~0.5 s to import) load on first use, so a gateway
    # that imports this package's light modules (schema, limits) without L2 never pays for them.
    if name == "EdgeL2Store":
        from services.gateway.l2.edge import EdgeL2Store

        return EdgeL2Store
    if name == "RemoteL2Store":
        from services.gateway.l2.remote import RemoteL2Store

        return RemoteL2Store
    raise AttributeError(name)


async def open_l2_store(settings: L2Settings, dimension: int) -> L2Store:
    """Open the L2 store the settings name, for vectors of ``dimension`` (the embedder's Info).

    Raises TierUnavailable when the store cannot be opened (server unreachable, a shard or
    collection holding another dimension). Close it with ``await store.close()``.
    """
    if dimension <= 0:
        raise ValueError(f"dimension must be positive, got {dimension}")
    from services.gateway.l2.edge import EdgeL2Store
    from services.gateway.l2.remote import RemoteL2Store

    timeout_secs = settings.timeout_ms / 1000
    if settings.qdrant_url:
        from qdrant_client import AsyncQdrantClient

        client = AsyncQdrantClient(
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
            # the HTTP client's own limit, whole seconds; our per-call deadline is tighter
            timeout=max(1, int(timeout_secs + 0.999)),
        )
        return await RemoteL2Store.open(
            client,
            settings.collection,
            dimension,
            oversampling=settings.oversampling,
            timeout_secs=timeout_secs,
            purge_interval_secs=settings.purge_interval_secs,
        )
    return await EdgeL2Store.open(
        settings.storage_path / settings.collection,
        dimension,
        oversampling=settings.oversampling,
        timeout_secs=timeout_secs,
        purge_interval_secs=settings.purge_interval_secs,
        optimize_every_points=settings.edge_optimize_points,
    )
