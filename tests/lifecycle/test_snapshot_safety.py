"""What a snapshot refuses and survives: another embedding model or dimension, a damaged part,
a kill -9 in the middle of writing one (locally and on GCS), and restores that fail half-way,
which must leave the current store as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from reflex.settings import GatewaySettings
from services.gateway.l2 import EdgeL2Store, RemoteL2Store
from services.gateway.l2.schema import ENTRY_ID, RawPoint
from services.gateway.lifecycle import LIFECYCLE, restore_edge_offline, restore_replacing
from services.gateway.snapshot import (
    INCOMPLETE,
    L2_PART,
    ModelIdentity,
    open_location,
)
from tests.lifecycle.support import QUESTION, GcsEmulator, TopicEmbedder, emulator_env, running_gateway, settings_for
from tests.support.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parents[2]


async def snapshot_of_one_gateway(tmp_path: Path, upstream: FakeUpstream, url: str) -> GatewaySettings:
    settings = settings_for(upstream, tmp_path / "made", snapshot_url=url)
    async with running_gateway(settings) as gw:
        await gw.ask(QUESTION)
        await gw.ask("another question")
    return settings


@pytest.mark.parametrize(("name", "dimension"), [("another-embedder", 32), ("test-topic-embedder", 16)])
async def test_hydrate_refuses_another_model_or_dimension(
    name: str, dimension: int, tmp_path: Path, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    url = str(tmp_path / "snaps")
    await snapshot_of_one_gateway(tmp_path, fake_upstream, url)
    other = settings_for(fake_upstream, tmp_path / "fresh", snapshot_url=url)
    async with running_gateway(other, embedder=TopicEmbedder(name, dimension)) as gw:
        assert gw.server.app[LIFECYCLE].hydrated is None
        assert (await gw.ask(QUESTION))[0] == "miss"  # started empty, L1 included
    refusal = [r.getMessage() for r in caplog.records if "hydrate refused" in r.getMessage()]
    assert refusal and ("another-embedder" in refusal[0] or "16-d" in refusal[0]), refusal


def reflex(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "commands.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=120)


async def test_cli_restore_refuses_a_mismatch_and_a_damaged_part_and_keeps_the_store(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    url = str(tmp_path / "snaps")
    made = await snapshot_of_one_gateway(tmp_path, fake_upstream, url)
    # the gateway that made it wrote the shard's identity marker; pretend it was another model
    (made.l2.storage_path / "reflex.identity.json").write_text('{"embedder": "e5-large", "dimension": 32}')
    env = {"REFLEX_STORAGE_PATH": str(made.l2.storage_path), "REFLEX_SEMANTIC": "1"}
    result = reflex("snapshot", "restore", url, env=env)
    assert result.returncode == 3, result.stderr
    assert "test-topic-embedder" in result.stderr and "e5-large" in result.stderr

    (made.l2.storage_path / "reflex.identity.json").unlink()
    (snapshot,) = open_location(url).list()
    part = Path(url) / snapshot.snapshot_id / L2_PART
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    result = reflex("snapshot", "restore", url, env=env)
    assert result.returncode == 3 and "checksum" in result.stderr, result.stderr
    store = await EdgeL2Store.open(made.l2.storage_path / "reflex", 32)
    try:
        assert await store.points_count() == 2  # untouched
    finally:
        await store.close()


async def test_a_failed_restore_leaves_the_current_shard_as_it_was(tmp_path: Path, fake_upstream: FakeUpstream,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "snaps")
    made = await snapshot_of_one_gateway(tmp_path, fake_upstream, url)
    current = settings_for(fake_upstream, tmp_path / "current")
    async with running_gateway(current) as gw:
        for i in range(5):
            await gw.ask(f"current question {i}")

    async def broken(self: Any, points: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(EdgeL2Store, "import_points", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        await restore_edge_offline(current.l2, open_location(url), ModelIdentity("test-topic-embedder", 32))
    monkeypatch.undo()
    assert sorted(p.name for p in current.l2.storage_path.iterdir()) == ["reflex"]  # nothing left beside it
    store = await EdgeL2Store.open(current.l2.storage_path / "reflex", 32)
    try:
        assert await store.points_count() == 5
    finally:
        await store.close()
    del made


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")
@pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning")
async def test_a_failed_restore_into_a_collection_puts_the_previous_entries_back(
    tmp_path: Path, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qdrant_client import AsyncQdrantClient

    url = str(tmp_path / "snaps")
    await snapshot_of_one_gateway(tmp_path, fake_upstream, url)
    store = await RemoteL2Store.open(AsyncQdrantClient(path=str(tmp_path / "local")), "reflex", 32, timeout_secs=30)
    try:
        mine = [RawPoint(str(uuid.uuid4()), [1.0] + [0.0] * 31, {ENTRY_ID: f"mine-{i}", "tenant": "t",
                "expires_at": time.time() + 3600}) for i in range(3)]
        await store.import_points(mine)
        real_import = RemoteL2Store.import_points
        calls = []

        async def fails_on_the_snapshot(self: Any, points: Any) -> None:
            calls.append(len(points))
            if len(calls) == 1:
                raise RuntimeError("connection reset")
            await real_import(self, points)

        monkeypatch.setattr(RemoteL2Store, "import_points", fails_on_the_snapshot)
        with pytest.raises(RuntimeError, match="connection reset"):
            await restore_replacing(open_location(url), ModelIdentity("test-topic-embedder", 32), store)
        monkeypatch.undo()
        left = sorted([p.payload[ENTRY_ID] async for page in store.export_points() for p in page])
        assert left == ["mine-0", "mine-1", "mine-2"]
        # and a restore that works replaces them
        manifest, loaded = await restore_replacing(open_location(url), ModelIdentity("test-topic-embedder", 32), store)
        assert loaded["l2"] == 2 and await store.points_count() == 2
    finally:
        await store.close()


async def big_shard(path: Path, points: int) -> None:
    store = await EdgeL2Store.open(path, 32, timeout_secs=60)
    try:
        for start in range(0, points, 2000):
            await store.import_points([
                RawPoint(str(uuid.uuid4()), [1.0] + [0.0] * 31,
                         {ENTRY_ID: f"e{i}", "tenant": "t", "model": "m", "context_hash": "c", "question": f"q{i}",
                          "entry": "x" * 2000, "expires_at": time.time() + 3600, "created_at": time.time()})
                for i in range(start, min(points, start + 2000))
            ])
    finally:
        await store.close()


async def test_kill_9_during_create_then_the_previous_snapshot_restores_cleanly(tmp_path: Path) -> None:
    storage = tmp_path / "data"
    await big_shard(storage / "reflex", 3)
    dest = tmp_path / "snaps"
    env = {"REFLEX_STORAGE_PATH": str(storage)}
    first = reflex("snapshot", "create", str(dest), env=env)
    assert first.returncode == 0, first.stderr
    await big_shard(storage / "reflex", 30_000)

    process = subprocess.Popen([sys.executable, "-m", "commands.cli", "snapshot", "create", str(dest)], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT), **env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(dest.glob(f"{INCOMPLETE}*")):
        assert process.poll() is None, "the snapshot finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    time.sleep(0.05)  # mid-write
    process.send_signal(signal.SIGKILL)
    process.wait(10)

    (only,) = open_location(str(dest)).list()  # the interrupted one does not exist
    assert only.counts["l2"] == 3
    fresh = {"REFLEX_STORAGE_PATH": str(tmp_path / "fresh")}
    restored = reflex("snapshot", "restore", str(dest), env=fresh)
    assert restored.returncode == 0, restored.stderr
    store = await EdgeL2Store.open(tmp_path / "fresh" / "reflex", 32)
    try:
        assert await store.points_count() == 3
    finally:
        await store.close()
    listing = reflex("snapshot", "list", str(dest), env=fresh)
    assert listing.stdout.count("\n") == 1 and only.snapshot_id in listing.stdout


async def test_a_crash_before_the_gcs_manifest_leaves_no_snapshot(
    tmp_path: Path, fake_upstream: FakeUpstream, gcs: GcsEmulator, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud.storage import Blob

    url = f"gs://{bucket}/snaps"
    with emulator_env(gcs):
        await snapshot_of_one_gateway(tmp_path, fake_upstream, url)
        real = Blob.upload_from_string

        def dies_at_the_manifest(self: Blob, *args: Any, **kwargs: Any) -> Any:
            if self.name.endswith("manifest.json"):
                raise ConnectionError("killed")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Blob, "upload_from_string", dies_at_the_manifest)
        settings = settings_for(fake_upstream, tmp_path / "made", snapshot_url=url)
        async with running_gateway(settings) as gw:
            await gw.ask("one more")
        monkeypatch.undo()
        names = [b.name for b in gcs.client().list_blobs(bucket)]
        assert sum(n.endswith("l2.bin.gz") for n in names) == 2  # the parts of both were uploaded
        (only,) = open_location(url).list()  # but only the first has a manifest
        assert only.counts["l2"] == 2
