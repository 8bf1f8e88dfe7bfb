"""REFLEX_TENANT_MAX_ENTRIES / REFLEX_TENANT_MAX_BYTES on a real Edge shard: past a cap the tenant's
oldest entries leave L2 (down to 90% of the cap), other tenants are untouched, and expired
entries are never served."""

from __future__ import annotations

import time
from pathlib import Path

from services.gateway.selection import Selection
from tests.lifecycle.support import Gateway, running_gateway, settings_for
from tests.support.fake_upstream import FakeUpstream


async def questions_in_l2(gw: Gateway, tenant: str) -> list[str]:
    l2 = await gw.state.cascade.l2_admin()
    points = [p async for page in l2.scan(Selection(tenant=tenant)) for p in page]
    return [p.question for p in sorted(points, key=lambda p: p.created_at)]


async def test_entry_cap_evicts_the_oldest_of_that_tenant_only(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    async with running_gateway(settings_for(fake_upstream, tmp_path, tenant_max_entries=10)) as gw:
        _, bob, _ = await gw.ask("bob 0", api_key="sk-bob")
        for i in range(11):
            _, alice, _ = await gw.ask(f"alice {i}")
        kept = await questions_in_l2(gw, alice["X-Reflex-Tenant"])
        assert kept == [f"alice {i}" for i in range(2, 11)]  # 11 > 10: down to 9, the two oldest gone
        assert await questions_in_l2(gw, bob["X-Reflex-Tenant"]) == ["bob 0"]
        metrics = (await gw.call("GET", "/metrics"))[1]
        assert 'reflex_gateway_tenant_evictions_total{cap="entries"} 2.0' in metrics


async def test_byte_cap(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    async with running_gateway(settings_for(fake_upstream, tmp_path, tenant_max_bytes=4096)) as gw:
        for i in range(12):
            _, headers, _ = await gw.ask(f"a question long enough to weigh something {i}")
        l2 = await gw.state.cascade.l2_admin()
        points = [p async for page in l2.scan(Selection(tenant=headers["X-Reflex-Tenant"])) for p in page]
        assert sum(p.size_bytes for p in points) <= 4096
        assert len(points) < 12
        newest = max(points, key=lambda p: p.created_at)
        assert newest.question.endswith(" 11")


async def test_expired_entries_are_never_served(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    async with running_gateway(settings_for(fake_upstream, tmp_path, cache_ttl_secs=1)) as gw:
        assert (await gw.ask("short-lived"))[0] == "miss"
        assert (await gw.ask("short-lived"))[0] == "hit-l1-exact"
        time.sleep(1.1)
        assert (await gw.ask("short-lived"))[0] == "miss"  # neither L1 nor L2 serves it
