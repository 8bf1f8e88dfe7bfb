"""Per-tenant caps on L2 (REFLEX_TENANT_MAX_ENTRIES, REFLEX_TENANT_MAX_BYTES).

Which entry goes first: the **oldest** (by ``created_at``), after any already expired. Least-used
would need a write to L2 on every hit to record the use, on the request path, and would still be
wrong: repeats are answered by L1 (and L3 hits are promoted into it), so most uses never reach
L2 and its use counts would mostly measure first paraphrases. Oldest-first needs nothing but the
creation time written once, is predictable for a tenant ("my cache holds my last N answers"),
and an old answer is also the likeliest to be stale.

Caps are checked after each write against a per-tenant tally (entries, bytes) that this gateway
keeps, recounted from the store when older than REFLEX_TENANT_RECOUNT_SECS. Past a cap the
tenant's points are read (one scan of that tenant) and the oldest are deleted down to 90% of the
cap, so a tenant at its cap pays an eviction scan every tenth of the cap's writes, not every write.
With several replicas each adds only its own writes between recounts, so a tenant can overshoot
by what the others wrote meanwhile; the next recount corrects it. Evicted entries leave L2 only;
their L1 copies age out of L1 by its own LRU and TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from reflex.settings import TenantLimitSettings
from reflex.tiers import L2Point, TierUnavailable
from services.gateway.l2 import schema
from services.gateway.metrics import GatewayMetrics
from services.gateway.selection import Selection

log = logging.getLogger("reflex.gateway.l2.limits")


@dataclass(slots=True)
class _Tally:
    entries: int
    size_bytes: int
    counted_at: float  # monotonic


def _target(cap: int) -> int:
    """Where an eviction stops: 90% of the cap (at least one below it for small caps)."""
    return cap - max(1, cap // 10) if cap > 1 else 1


class TenantCaps:
    def __init__(self, limits: TenantLimitSettings, metrics: GatewayMetrics | None = None) -> None:
        self._limits = limits
        self._metrics = metrics
        self._tallies: dict[str, _Tally] = {}
        self._lock = asyncio.Lock()  # one eviction at a time: two would pick the same victims

    @property
    def active(self) -> bool:
        return self._limits.max_entries is not None or self._limits.max_bytes is not None

    def _over(self, entries: int, size: int) -> bool:
        cap_e, cap_b = self._limits.max_entries, self._limits.max_bytes
        return (cap_e is not None and entries > cap_e) or (cap_b is not None and size > cap_b)

    async def after_write(self, store: schema.L2Admin, point: L2Point) -> int:
        """Account for ``point`` (just written) and evict if its tenant is now past a cap; returns
        how many points were evicted. Failures are logged, never raised: the write itself succeeded."""
        if not self.active:
            return 0
        tenant = point.scope.tenant
        try:
            tally = self._tallies.get(tenant)
            if tally is None or time.monotonic() - tally.counted_at > self._limits.recount_secs:
                tally = await self._recount(store, tenant)
            else:
                tally.entries += 1
                tally.size_bytes += schema.point_size(len(point.vector), point.question, len(point.entry))
            if not self._over(tally.entries, tally.size_bytes):
                return 0
            return await self._evict(store, tenant)
        except TierUnavailable as exc:
            log.warning("tenant cap check failed (the write stands): %s", exc)
            return 0

    def forget(self, tenant: str | None = None) -> None:
        """Drop a tally (all when None) after an invalidation or restore, so the next write recounts."""
        if tenant is None:
            self._tallies.clear()
        else:
            self._tallies.pop(tenant, None)

    async def _recount(self, store: schema.L2Admin, tenant: str) -> _Tally:
        entries = size = 0
        async for page in store.scan(Selection(tenant=tenant)):
            entries += len(page)
            size += sum(p.size_bytes for p in page)
        tally = self._tallies[tenant] = _Tally(entries, size, time.monotonic())
        return tally

    async def _evict(self, store: schema.L2Admin, tenant: str) -> int:
        async with self._lock:
            points = [p async for page in store.scan(Selection(tenant=tenant)) for p in page]
            now = time.time()
            points.sort(key=lambda p: (p.expires_at > now, p.created_at))  # expired first, then oldest
            entries, size = len(points), sum(p.size_bytes for p in points)
            cap_e, cap_b = self._limits.max_entries, self._limits.max_bytes
            if not self._over(entries, size):
                self._tallies[tenant] = _Tally(entries, size, time.monotonic())
                return 0
            goal_e = _target(cap_e) if cap_e is not None else None
            goal_b = int(cap_b * 0.9) if cap_b is not None else None
            victims: list[str] = []
            by_entries = by_bytes = 0
            for p in points:
                over_e = goal_e is not None and entries > goal_e
                over_b = goal_b is not None and size > goal_b
                if not (over_e or over_b):
                    break
                victims.append(p.point_id)
                by_entries += over_e
                by_bytes += over_b and not over_e
                entries -= 1
                size -= p.size_bytes
            await store.delete_points(victims)
            self._tallies[tenant] = _Tally(entries, size, time.monotonic())
            if self._metrics is not None:
                self._metrics.evictions.labels("entries").inc(by_entries)
                self._metrics.evictions.labels("bytes").inc(by_bytes)
                self._metrics.invalidated.labels("l2", "cap").inc(len(victims))
            log.info("tenant %s past its L2 cap: evicted its %d oldest entries", tenant[:12], len(victims))
            return len(victims)
