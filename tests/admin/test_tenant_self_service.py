"""DELETE /v1/reflex/cache and /v1/reflex/cache/{id}, authorised by the caller's own API key, with
two tenants who cached the same questions: each touches only its own entries, in L1 and L2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.gateway.selection import Selection
from tests.lifecycle.support import PARAPHRASE, QUESTION, running_gateway, settings_for
from tests.support.fake_upstream import FakeUpstream

ALICE, BOB = "sk-tenant-alice", "sk-tenant-bob"


async def test_each_tenant_empties_only_its_own_cache(
    tmp_path: Path, fake_upstream: FakeUpstream, l1_settings: dict[str, Any]
) -> None:
    async with running_gateway(settings_for(fake_upstream, tmp_path, **l1_settings)) as gw:
        for key in (ALICE, BOB):
            await gw.ask(QUESTION, api_key=key)
            await gw.ask("second question", api_key=key)
        status, body = await gw.call("DELETE", "/v1/reflex/cache", api_key=ALICE)
        assert status == 200 and body["removed"] == {"l1": 2, "l2": 2}, body
        for question in (QUESTION, "second question"):
            assert (await gw.ask(question, api_key=BOB))[0] == "hit-l1-exact"
        assert (await gw.ask(PARAPHRASE, api_key=BOB))[0] == "hit-l3-verified"
        assert (await gw.ask(PARAPHRASE, api_key=ALICE))[0] == "miss"  # nothing of alice's left in L2
        assert (await gw.ask("second question", api_key=ALICE))[0] == "miss"


async def test_one_entry_by_id_and_never_another_tenants(
    tmp_path: Path, fake_upstream: FakeUpstream, l1_settings: dict[str, Any]
) -> None:
    async with running_gateway(settings_for(fake_upstream, tmp_path, **l1_settings)) as gw:
        _, alice_headers, _ = await gw.ask(QUESTION, api_key=ALICE)
        _, bob_headers, _ = await gw.ask(QUESTION, api_key=BOB)
        l2 = await gw.state.cascade.l2_admin()
        ids = {p.tenant: p.entry_id async for page in l2.scan(Selection()) for p in page}
        alice_id, bob_id = ids[alice_headers["X-Reflex-Tenant"]], ids[bob_headers["X-Reflex-Tenant"]]
        assert (await gw.call("DELETE", f"/v1/reflex/cache/{bob_id}", api_key=ALICE))[0] == 404  # not hers
        assert (await gw.ask(QUESTION, api_key=BOB))[0] == "hit-l1-exact"
        status, body = await gw.call("DELETE", f"/v1/reflex/cache/{alice_id}", api_key=ALICE)
        assert status == 200 and body["removed"] == {"l1": 1, "l2": 1}, body
        assert (await gw.ask(QUESTION, api_key=ALICE))[0] == "miss"
        assert (await gw.ask(QUESTION, api_key=BOB))[0] == "hit-l1-exact"


async def test_keyless_callers_cannot_empty_the_shared_anonymous_tenant(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    async with running_gateway(settings_for(fake_upstream, tmp_path)) as gw:
        status, body = await gw.call("DELETE", "/v1/reflex/cache")
        assert status == 401 and body["error"]["code"] == "missing_api_key"
        assert (await gw.call("DELETE", "/v1/reflex/cache/abc"))[0] == 401
