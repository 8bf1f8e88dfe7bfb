"""The L2 store the gateway builds from settings: ``LazyL2Store`` (open on first use, with the
embedder's dimension) plus per-tenant caps on every write and access to the opened backend's
administration interface (``schema.L2Admin``) for the admin API, the caps and snapshots."""

from __future__ import annotations

from reflex.settings import L2Settings, TenantLimitSettings
from reflex.tiers import Embedder, L2Point
from services.gateway.l2 import schema
from services.gateway.l2.limits import TenantCaps
from services.gateway.metrics import GatewayMetrics
from services.gateway.semantic import LazyL2Store


class ManagedL2(LazyL2Store):
    def __init__(
        self,
        settings: L2Settings,
        embedder: Embedder,
        *,
        probe_timeout_secs: float,
        limits: TenantLimitSettings,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        super().__init__(settings, embedder, probe_timeout_secs=probe_timeout_secs)
        self.caps = TenantCaps(limits, metrics)

    async def admin_store(self) -> schema.L2Admin:
        """The opened backend (opening it now if needed: TierUnavailable while the embedder is down)."""
        store = await self._open(None)
        return await store.admin_store()  # type: ignore[attr-defined, no-any-return]

    async def upsert(self, point: L2Point) -> None:
        await super().upsert(point)
        if self.caps.active:
            await self.caps.after_write(await self.admin_store(), point)
