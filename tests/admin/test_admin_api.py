"""The admin API on a real gateway (Edge shard, both L1 backends): token handling, delete by id
(with the copies of the answer L3 promoted into L1), invalidation by each criterion, and stats."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from services.gateway.selection import Selection
from tests.lifecycle.support import PARAPHRASE, QUESTION, Gateway, running_gateway, settings_for
from tests.support.fake_upstream import FakeUpstream

TOKEN = "admin-secret-token"


async def l2_entries(gw: Gateway, **selection: Any) -> dict[str, str]:
    """entry id -> question of every L2 point (of the selection)."""
    l2 = await gw.state.cascade.l2_admin()
    return {p.entry_id: p.question async for page in l2.scan(Selection(**selection)) for p in page}


async def test_disabled_is_404_and_the_token_is_required(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    async with running_gateway(settings_for(fake_upstream, tmp_path)) as gw:
        assert (await gw.call("GET", "/admin/v1/stats", token=TOKEN))[0] == 404
    async with running_gateway(settings_for(fake_upstream, tmp_path, admin_token=TOKEN)) as gw:
        assert (await gw.call("GET", "/admin/v1/stats"))[0] == 401
        assert (await gw.call("GET", "/admin/v1/stats", token=TOKEN + "x"))[0] == 401
        assert (await gw.call("GET", "/admin/v1/stats", token=TOKEN[:-1]))[0] == 401
        status, body = await gw.call("GET", "/admin/v1/stats", token=TOKEN)
        assert status == 200 and body == {"tenants": {}}


async def test_delete_one_entry_takes_its_l1_copies_too(
    tmp_path: Path, fake_upstream: FakeUpstream, l1_settings: dict[str, Any]
) -> None:
    async with running_gateway(settings_for(fake_upstream, tmp_path, admin_token=TOKEN, **l1_settings)) as gw:
        await gw.ask(QUESTION)
        await gw.ask("keep me")
        assert (await gw.ask(PARAPHRASE))[0] == "hit-l3-verified"  # promoted into L1 under its own key
        assert (await gw.ask(PARAPHRASE))[0] == "hit-l1-exact"
        (origin,) = [e for e, q in (await l2_entries(gw)).items() if q == QUESTION]
        status, body = await gw.call("DELETE", f"/admin/v1/entries/{origin}", token=TOKEN)
        assert status == 200 and body["removed"] == {"l1": 2, "l2": 1}, body
        assert (await gw.ask(PARAPHRASE))[0] == "miss"
        assert (await gw.ask("keep me"))[0] == "hit-l1-exact"
        assert (await gw.call("DELETE", f"/admin/v1/entries/{origin}", token=TOKEN))[0] == 404


@pytest.mark.parametrize(
    ("criteria", "gone"),
    [
        ({"model": "gpt-4o"}, {"q-other-model"}),
        ({"question_contains": "SOURDOUGH"}, {"how do I bake sourdough?"}),
        ({"tenant": "__bob__"}, {"q-bob"}),
        ({"older_than_secs": 1.0}, {"old question"}),
        ({"context_hash": "__ctx__"}, {"q-system-prompt"}),
    ],
)
async def test_invalidate_by_each_criterion_in_both_tiers(
    criteria: dict[str, Any], gone: set[str], tmp_path: Path, fake_upstream: FakeUpstream, l1_settings: dict[str, Any]
) -> None:
    async with running_gateway(settings_for(fake_upstream, tmp_path, admin_token=TOKEN, **l1_settings)) as gw:
        await gw.ask("old question")
        time.sleep(1.1)
        await gw.ask("how do I bake sourdough?")
        await gw.ask("q-other-model", model="gpt-4o")
        await gw.ask("q-bob", api_key="sk-tenant-bob")
        system = {"messages": [{"role": "system", "content": "be terse"}, {"role": "user", "content": "q-system-prompt"}]}
        status, headers, _ = await gw.ask("q-system-prompt", **system)
        everything = {"old question", "how do I bake sourdough?", "q-other-model", "q-bob", "q-system-prompt"}
        points = {p.question: p async for page in (await gw.state.cascade.l2_admin()).scan() for p in page}
        if criteria.get("tenant") == "__bob__":
            criteria = {"tenant": points["q-bob"].tenant}
        if criteria.get("context_hash") == "__ctx__":
            criteria = {"context_hash": points["q-system-prompt"].context_hash}
        status, body = await gw.call("POST", "/admin/v1/invalidate", token=TOKEN, json=criteria)
        assert status == 200 and body["removed"] == {"l1": len(gone), "l2": len(gone)}, body
        assert set((await l2_entries(gw)).values()) == everything - gone
        for question in everything:
            extra: dict[str, Any] = {}
            if question == "q-other-model":
                extra = {"model": "gpt-4o"}
            elif question == "q-system-prompt":
                extra = system
            key = "sk-tenant-bob" if question == "q-bob" else None
            status, _, _ = await gw.ask(question, api_key=key, **extra)
            assert (status == "miss") == (question in gone), (question, status)


async def test_invalidate_refuses_no_criteria_and_unknown_ones(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    async with running_gateway(settings_for(fake_upstream, tmp_path, admin_token=TOKEN)) as gw:
        await gw.ask(QUESTION)
        assert (await gw.call("POST", "/admin/v1/invalidate", token=TOKEN, json={}))[0] == 400
        assert (await gw.call("POST", "/admin/v1/invalidate", token=TOKEN, json={"colour": "red"}))[0] == 400
        assert (await gw.call("POST", "/admin/v1/invalidate", token=TOKEN, json={"older_than_secs": "1"}))[0] == 400
        status, body = await gw.call("POST", "/admin/v1/invalidate", token=TOKEN, json={"all": True})
        assert status == 200 and body["removed"] == {"l1": 1, "l2": 1}


async def test_per_tenant_stats(tmp_path: Path, fake_upstream: FakeUpstream, l1_settings: dict[str, Any]) -> None:
    async with running_gateway(settings_for(fake_upstream, tmp_path, admin_token=TOKEN, **l1_settings)) as gw:
        await gw.ask(QUESTION)
        _, headers, _ = await gw.ask(QUESTION)
        await gw.ask(PARAPHRASE)
        await gw.ask("bob asks", api_key="sk-tenant-bob")
        alice = headers["X-Reflex-Tenant"]
        status, body = await gw.call("GET", f"/admin/v1/tenants/{alice}/stats", token=TOKEN)
        assert status == 200
        stats = body["tenants"][alice]
        assert stats["entries"] == {"l1": 2, "l2": 1}  # the question, and the paraphrase promoted to L1
        assert stats["hits"] == {"hit-l1-exact": 1, "hit-l3-verified": 1}
        assert stats["requests"]["miss"] == 1
        assert stats["tokens_saved"] > 0
        assert stats["bytes"]["l2"] > 32 * 4 and stats["bytes"]["l1"] > 0
        status, body = await gw.call("GET", "/admin/v1/stats", token=TOKEN)
        assert len(body["tenants"]) == 2
        metrics = (await gw.call("GET", "/metrics"))[1]
        assert f'reflex_gateway_tenant_requests_total{{status="hit-l3-verified",tenant="{alice}"}} 1.0' in metrics


async def test_a_snapshot_through_the_admin_api(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    url = str(tmp_path / "snaps")
    async with running_gateway(settings_for(fake_upstream, tmp_path / "d", admin_token=TOKEN)) as gw:
        await gw.ask(QUESTION)
        assert (await gw.call("POST", "/admin/v1/snapshots", token=TOKEN))[0] == 409  # no location configured
        status, manifest = await gw.call("POST", "/admin/v1/snapshots", token=TOKEN, json={"url": url})
        assert status == 201 and manifest["counts"] == {"l2": 1, "l1": 1}
        status, listed = await gw.call("GET", f"/admin/v1/snapshots?url={url}", token=TOKEN)
        assert [s["snapshot_id"] for s in listed["snapshots"]] == [manifest["snapshot_id"]]

