"""Snapshots of a serving gateway, restored into a fresh storage path: what was cached is served
again (exact repeats from L1, a paraphrase through L2 + L3), from a local directory and from GCS
(the fake-gcs-server emulator, through google-cloud-storage)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.gateway.lifecycle import LIFECYCLE
from services.gateway.snapshot import L1_PART, L2_PART, open_location
from tests.lifecycle.support import PARAPHRASE, QUESTION, GcsEmulator, emulator_env, running_gateway, settings_for
from tests.support.fake_upstream import FakeUpstream

TOOL_ONLY = "the answer depends on this tool result"  # not a user question: an L1-only entry


async def fill(gw, n: int = 3) -> None:  # type: ignore[no-untyped-def]
    assert (await gw.ask(QUESTION))[0] == "miss"
    for i in range(n):
        assert (await gw.ask(f"unrelated question {i}"))[0] == "miss"


@pytest.mark.parametrize("where", ["local", "gcs"])
async def test_round_trip_into_a_fresh_storage_path(
    where: str, tmp_path: Path, fake_upstream: FakeUpstream, request: pytest.FixtureRequest
) -> None:
    if where == "gcs":
        gcs: GcsEmulator = request.getfixturevalue("gcs")
        url = f"gs://{request.getfixturevalue('bucket')}/reflex/prod"
        env = emulator_env(gcs)
    else:
        url = str(tmp_path / "snapshots")
        env = None
    with env or _nothing():
        first = settings_for(fake_upstream, tmp_path / "a", snapshot_url=url)
        async with running_gateway(first) as gw:
            await fill(gw)
            _, _, answer = await gw.ask(QUESTION)
        # the stop dehydrated: one snapshot, with both parts and a manifest that names the models
        (manifest,) = open_location(url).list()
        assert manifest.counts == {"l2": 4, "l1": 4}
        assert (manifest.embedder, manifest.dimension, manifest.verifier) == ("test-topic-embedder", 32, "test-topic-verifier")
        assert set(manifest.parts) == {L1_PART, L2_PART} and all(len(p.sha256) == 64 for p in manifest.parts.values())

        calls = fake_upstream.chat_count
        fresh = settings_for(fake_upstream, tmp_path / "b", snapshot_url=url)
        async with running_gateway(fresh) as gw:
            assert gw.server.app[LIFECYCLE].hydrated == {"l2": 4, "l1": 4}
            status, _, content = await gw.ask(QUESTION)
            assert (status, content) == ("hit-l1-exact", answer)
            status, headers, content = await gw.ask(PARAPHRASE)
            assert (status, content) == ("hit-l3-verified", answer), headers
            assert (await gw.ask("unrelated question 2"))[0] == "hit-l1-exact"
        assert fake_upstream.chat_count == calls  # all from the restored cache


async def test_hydrate_skips_a_store_that_already_has_entries(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    url = str(tmp_path / "snapshots")
    settings = settings_for(fake_upstream, tmp_path / "a", snapshot_url=url)
    async with running_gateway(settings) as gw:
        await fill(gw, 1)
    async with running_gateway(settings.replace(snapshot_url=None)) as gw:
        await gw.ask("written after the snapshot")
    async with running_gateway(settings) as gw:
        assert gw.server.app[LIFECYCLE].hydrated is None  # kept the newer local store
        assert (await gw.ask("written after the snapshot"))[0] == "hit-l3-verified"


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
