"""The gateway's lifecycle: hydrate from a snapshot at start, dehydrate at stop, stop when idle.

- **Hydrate** (start-up, before the port opens): when a snapshot location is configured
  (REFLEX_SNAPSHOT_URL, or the seed's REFLEX_GCS_BUCKET + REFLEX_SNAPSHOT_PATH) and holds a
  snapshot, and the L2 store is empty (a fresh disk: a new VM, a pod, a scale-to-zero start), the
  newest snapshot is loaded into L2 and the in-process L1. A store that already holds entries is
  kept as it is: it is at least as new as the last snapshot (a restart on the same disk, or a
  Qdrant server other replicas share), and loading an older snapshot's L1 over it could bring back
  entries that were deleted since. When L2 cannot be opened yet (the embedder is still starting),
  hydration retries in the background until it can.
- **Dehydrate** (graceful stop, after in-flight requests and pending cache writes drained): a new
  snapshot is written to the same location, and older ones beyond REFLEX_SNAPSHOT_KEEP are deleted.
  With Redis configured a lock is taken first, so that of several gateways sharing one Qdrant
  server only one writes a snapshot at a time; the others skip theirs (they would write the same
  L2). Without Redis, several replicas on one Qdrant server should leave snapshots off and rely
  on the server's own snapshots (README).
- **Idle**: with REFLEX_IDLE_TIMEOUT_SECS set, once no API request has come for that long (health,
  readiness and metrics scrapes do not count) and none is in flight, the gateway logs why and asks
  its runner to stop: it drains, dehydrates and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from reflex.settings import GatewaySettings, L2Settings
from services.gateway.cascade import SemanticTiers
from services.gateway.l1 import L1Cache, MemoryL1
from services.gateway.l2.schema import L2Admin
from services.gateway.metrics import GatewayMetrics
from services.gateway.snapshot import (
    L1_PART,
    L2_PART,
    Location,
    Manifest,
    ModelIdentity,
    SnapshotError,
    SnapshotNotFound,
    SnapshotRefused,
    new_snapshot_id,
    new_writer,
    open_location,
    read_l1,
    read_l2,
    write_l1,
    write_l2_page,
)
from services.gateway.state import STATE

log = logging.getLogger("reflex.gateway.lifecycle")

# Requests to these paths are probes and scrapes: they never keep an idle gateway up.
NOT_ACTIVITY = frozenset({"/healthz", "/ready", "/metrics"})
_IDENTITY_TIMEOUT_SECS = 5.0


# ---------------------------------------------------------------------------- identity
async def model_identity(settings: GatewaySettings, tiers: SemanticTiers | None, l2: L2Admin | None) -> ModelIdentity:
    """The embedding model and dimension the stored vectors depend on, and the verifier's id.

    Asked of the model services (their ``Info``) when they are reachable by URL; an in-test
    stand-in may offer ``info()`` itself. The dimension falls back to the open store's.
    """
    if tiers is None:
        return ModelIdentity(None, None, None)
    embedder = await _info(tiers.embedder, settings.models.embedder_url, "embedder")
    verifier = await _info(tiers.verifier, settings.models.verifier_url, "verifier")
    dimension = embedder.get("dimension") or (l2.dimension if l2 is not None else None)
    return ModelIdentity(embedder.get("model_name"), int(dimension) if dimension else None, verifier.get("model_name"))


async def _info(tier: Any, url: str | None, kind: str) -> dict[str, Any]:
    own = getattr(tier, "info", None) if tier is not None else None
    if own is not None:
        return dict(await own())
    if not url:
        return {}
    import grpc  # noqa: PLC0415 - only the gateway's model clients need it otherwise

    if kind == "embedder":
        from reflex.embedder.v1 import embedder_pb2 as pb2, embedder_pb2_grpc as pb2_grpc

        stub_class: Any = pb2_grpc.EmbedderServiceStub
    else:
        from reflex.verifier.v1 import verifier_pb2 as pb2, verifier_pb2_grpc as pb2_grpc  # type: ignore[no-redef]

        stub_class = pb2_grpc.VerifierServiceStub
    try:
        async with grpc.aio.insecure_channel(url) as channel:
            reply = await stub_class(channel).Info(pb2.InfoRequest(), timeout=_IDENTITY_TIMEOUT_SECS)
    except grpc.aio.AioRpcError as exc:
        log.warning("%s Info failed (%s): the snapshot manifest will not name it", kind, exc.code().name)
        return {}
    out: dict[str, Any] = {"model_name": reply.model_name}
    if kind == "embedder":
        out["dimension"] = int(reply.dimension)
    return out


# ---------------------------------------------------------------------------- writing and applying
@dataclass(frozen=True, slots=True)
class Sources:
    """What a snapshot is taken of: the store's parts, whichever process holds them."""

    identity: ModelIdentity
    l1: L1Cache | None
    l2: L2Admin | None
    l2_backend: str | None


async def write_snapshot(location: Location, sources: Sources, *, keep: int | None = None) -> Manifest:
    """Write one snapshot of ``sources`` to ``location`` (atomically; see snapshot.py)."""
    snapshot_id = new_snapshot_id()
    staged = await asyncio.to_thread(location.stage, snapshot_id)
    try:
        parts = {}
        writer = new_writer(staged, L2_PART)
        try:
            if sources.l2 is not None:
                async for page in sources.l2.export_points():
                    # encoding and gzip run on a worker thread (zlib releases the GIL), not the loop
                    await asyncio.to_thread(write_l2_page, writer, page)
        finally:
            parts[L2_PART] = await asyncio.to_thread(writer.close)
        writer = new_writer(staged, L1_PART)
        try:
            if isinstance(sources.l1, MemoryL1):
                entries = sources.l1.export_entries()  # references only, on the loop: no await between
                await asyncio.to_thread(write_l1, writer, entries)
        finally:
            parts[L1_PART] = await asyncio.to_thread(writer.close)
        manifest = Manifest(
            snapshot_id=snapshot_id,
            created_at=time.time(),
            embedder=sources.identity.embedder,
            dimension=sources.identity.dimension,
            verifier=sources.identity.verifier,
            l1_backend=sources.l1.name if sources.l1 is not None else "none",
            l2_backend=sources.l2_backend,
            parts=parts,
        )
        await asyncio.to_thread(location.commit, staged, manifest)
    except BaseException:
        await asyncio.to_thread(location.abandon, staged)
        raise
    if keep is not None:
        removed = await asyncio.to_thread(location.prune, keep)
        if removed:
            log.info("snapshots pruned (keeping %d): %s", keep, ", ".join(removed))
    return manifest


async def import_parts(manifest: Manifest, folder: Path, l1: L1Cache | None, l2: L2Admin | None) -> dict[str, int]:
    """Load a verified snapshot's parts into ``l2`` and an in-process ``l1``; counts loaded.

    L2 first; L1 only once L2 has succeeded, so a failure leaves L1 as it was. The caller makes
    the L2 side undoable (an empty store it clears, or a copy it swaps in).
    """
    loaded = {"l1": 0, "l2": 0}
    if l2 is not None:
        pages = await asyncio.to_thread(lambda: iter(read_l2(folder / L2_PART)))
        while (page := await asyncio.to_thread(next, pages, None)) is not None:
            await l2.import_points(page)
            loaded["l2"] += len(page)
    elif manifest.parts[L2_PART].records:
        log.warning("snapshot %s holds %d L2 entries, and this gateway has no L2: they are not loaded",
                    manifest.snapshot_id, manifest.parts[L2_PART].records)
    if isinstance(l1, MemoryL1):
        entries = await asyncio.to_thread(lambda: list(read_l1(folder / L1_PART)))
        loaded["l1"] = l1.import_entries(entries)
    elif manifest.parts[L1_PART].records:
        log.info("snapshot %s holds %d in-process L1 entries; this L1 is %s, so they are not loaded",
                 manifest.snapshot_id, manifest.parts[L1_PART].records, l1.name if l1 else "off")
    return loaded


async def restore_into_empty(
    location: Location, identity: ModelIdentity, l1: L1Cache | None, l2: L2Admin | None,
    snapshot_id: str | None = None,
) -> tuple[Manifest, dict[str, int]]:
    """Restore into an empty live store (hydrate); on failure the store is emptied again."""
    with location.fetch(snapshot_id) as (manifest, folder):
        manifest.check_compatible(identity)
        try:
            return manifest, await import_parts(manifest, folder, l1, l2)
        except BaseException:
            if l2 is not None:
                await l2.clear()
            raise


async def restore_edge_offline(
    settings: L2Settings, location: Location, identity: ModelIdentity | None, snapshot_id: str | None = None,
) -> tuple[Manifest, dict[str, int]]:
    """Replace the embedded shard at REFLEX_STORAGE_PATH/REFLEX_QDRANT_COLLECTION (no process may hold it).

    The snapshot is loaded into a new shard beside the current one, indexed and closed; only then
    is the current shard moved aside and the new one renamed into its place. Any failure before
    that leaves the current shard untouched.
    """
    from services.gateway.l2.edge import EdgeL2Store

    target = settings.storage_path / settings.collection
    with location.fetch(snapshot_id) as (manifest, folder):
        if identity is not None:
            manifest.check_compatible(identity)
        if manifest.dimension is None:
            raise SnapshotRefused(f"snapshot {manifest.snapshot_id} does not say its vector dimension")
        suffix = secrets.token_hex(3)
        fresh = target.with_name(f"{target.name}.restore-{suffix}")
        try:
            store = await EdgeL2Store.open(fresh, manifest.dimension, timeout_secs=60.0)
            try:
                loaded = await import_parts(manifest, folder, None, store)
                await store.optimize()
            finally:
                await store.close()
            previous = target.with_name(f"{target.name}.previous-{suffix}")
            if target.exists():
                target.rename(previous)
            fresh.rename(target)
            shutil.rmtree(previous, ignore_errors=True)
        finally:
            shutil.rmtree(fresh, ignore_errors=True)
        write_identity_marker(settings, _identity_of(manifest))
        return manifest, loaded


async def restore_replacing(
    location: Location, identity: ModelIdentity, l2: L2Admin, snapshot_id: str | None = None,
) -> tuple[Manifest, dict[str, int]]:
    """Replace the contents of an open store (a Qdrant server's collection) with a snapshot.

    The current points are exported to a temporary part first; if loading the snapshot fails, the
    store is cleared and the copy loaded back, so a failed restore leaves the store as it was.
    """
    with location.fetch(snapshot_id) as (manifest, folder):
        manifest.check_compatible(identity)
        backup = Path(await asyncio.to_thread(_tempdir))
        try:
            writer = new_writer(backup, L2_PART)
            async for page in l2.export_points():
                await asyncio.to_thread(write_l2_page, writer, page)
            await asyncio.to_thread(writer.close)
            await l2.clear()
            try:
                return manifest, await import_parts(manifest, folder, None, l2)
            except BaseException:
                log.error("restore of %s failed: putting the previous entries back", manifest.snapshot_id)
                await l2.clear()
                for page in read_l2(backup / L2_PART):
                    await l2.import_points(page)
                raise
        finally:
            shutil.rmtree(backup, ignore_errors=True)


def _identity_of(manifest: Manifest) -> ModelIdentity:
    return ModelIdentity(manifest.embedder, manifest.dimension, manifest.verifier)


def _tempdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="reflex-restore-backup-")


# ---------------------------------------------------------------------------- offline (reflex snapshot)
def identity_marker(settings: L2Settings) -> Path:
    """Beside an embedded shard: the identity of the models its vectors came from, written by
    every snapshot and restore, so an offline restore can refuse a mismatch with no embedder."""
    return settings.storage_path / f"{settings.collection}.identity.json"


def write_identity_marker(settings: L2Settings, identity: ModelIdentity) -> None:
    if settings.qdrant_url or identity.embedder is None:
        return
    marker = identity_marker(settings)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"embedder": identity.embedder, "dimension": identity.dimension,
                                  "verifier": identity.verifier}))
    tmp.replace(marker)


def read_identity_marker(settings: L2Settings) -> ModelIdentity | None:
    try:
        obj = orjson.loads(identity_marker(settings).read_bytes())
        return ModelIdentity(obj.get("embedder"), obj.get("dimension"), obj.get("verifier"))
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return None


async def open_existing_store(settings: L2Settings) -> tuple[Any, str] | None:
    """Open the configured L2 store for an offline tool, or None when it does not exist yet.
    The caller closes it. (No embedder: the dimension is the store's own.)"""
    timeout = max(settings.timeout_ms / 1000, 60.0)
    if settings.qdrant_url:
        from qdrant_client import AsyncQdrantClient

        from services.gateway.l2.remote import RemoteL2Store

        client = AsyncQdrantClient(url=settings.qdrant_url, timeout=int(timeout),
                                   api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None)
        if not await client.collection_exists(settings.collection):
            await client.close()
            return None
        info = await client.get_collection(settings.collection)
        vectors: Any = info.config.params.vectors
        return await RemoteL2Store.open(client, settings.collection, int(vectors.size), timeout_secs=timeout), "qdrant"
    from services.gateway.l2.edge import EdgeL2Store, stored_dimension

    path = settings.storage_path / settings.collection
    dimension = stored_dimension(path)
    if dimension is None:
        return None
    return await EdgeL2Store.open(path, dimension, timeout_secs=timeout), "edge"


async def offline_identity(settings: GatewaySettings, store: Any | None) -> ModelIdentity | None:
    """What the configured store's vectors are, for a tool running without the gateway: the
    embedder's Info when REFLEX_EMBEDDER_URL reaches one, else the shard's identity marker, else
    only the store's dimension; None when nothing is known (no store yet)."""
    info = await _info(None, settings.models.embedder_url, "embedder") if settings.models.embedder_url else {}
    if info:
        verifier = await _info(None, settings.models.verifier_url, "verifier") if settings.models.verifier_url else {}
        return ModelIdentity(info.get("model_name"), info.get("dimension"), verifier.get("model_name"))
    marker = read_identity_marker(settings.l2)
    if marker is not None:
        return marker
    if store is not None:
        return ModelIdentity(None, store.dimension, None)
    return None


# ---------------------------------------------------------------------------- one lock for several replicas
class SnapshotLockBusy(SnapshotError):
    pass


@contextlib.asynccontextmanager
async def snapshot_lock(redis_url: str | None, location: str, ttl_secs: float) -> AsyncIterator[None]:
    """Hold ``reflex:snapshot-lock:<location>`` in Redis (SET NX PX), or nothing without Redis.

    Released only by its holder (compare-and-delete), and it expires by itself if the holder dies.
    """
    if redis_url is None:
        yield
        return
    import redis.asyncio as aioredis

    key = f"reflex:snapshot-lock:{location}"
    token = secrets.token_hex(16)
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        if not await client.set(key, token, nx=True, px=int(ttl_secs * 1000)):
            raise SnapshotLockBusy(f"another gateway holds {key}")
        try:
            yield
        finally:
            await client.eval(
                "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
                1, key, token,
            )
    finally:
        await client.aclose()


# ---------------------------------------------------------------------------- the per-app lifecycle
class Lifecycle:
    """One per gateway app (``app[LIFECYCLE]``): activity clock, idle watch, hydrate, dehydrate."""

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.location_url = settings.lifecycle.location
        self.last_activity = time.monotonic()
        # The gauge is computed when scraped: touch() runs twice per request, and a gauge set
        # (a lock, and the wall clock) on each would be paid by every L1 hit.
        self.metrics.last_request.set_function(lambda: time.time() - (time.monotonic() - self.last_activity))
        # set when the gateway should stop by itself (idle); the runner waits on it with the signals
        self.stop_requested = asyncio.Event()
        self.stop_reason: str | None = None
        self.hydrated: dict[str, int] | None = None
        self._snapshotting = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def location(self, url: str | None = None) -> Location:
        url = url or self.location_url
        if url is None:
            raise SnapshotError("no snapshot location: set REFLEX_SNAPSHOT_URL (or REFLEX_GCS_BUCKET / REFLEX_SNAPSHOT_PATH)")
        return open_location(url)

    async def _sources(self, app: web.Application) -> Sources:
        state = app[STATE]
        tiers = state.cascade.tiers
        l2 = await state.cascade.l2_admin()
        backend = None
        if l2 is not None:
            backend = "qdrant" if self.settings.l2.qdrant_url else "edge"
        return Sources(await model_identity(self.settings, tiers, l2), state.cascade.l1, l2, backend)

    async def snapshot(self, app: web.Application, url: str | None = None) -> Manifest:
        """Write a snapshot now, while serving (the admin API's and dehydrate's way)."""
        location = self.location(url)
        async with self._snapshotting:
            started = time.perf_counter()
            try:
                manifest = await write_snapshot(location, await self._sources(app), keep=self.settings.lifecycle.snapshot_keep)
            except Exception:
                self.metrics.snapshots.labels("create", "failed").inc()
                raise
            elapsed = time.perf_counter() - started
        await asyncio.to_thread(write_identity_marker, self.settings.l2, _identity_of(manifest))
        self.metrics.snapshots.labels("create", "ok").inc()
        self.metrics.snapshot_seconds.labels("create").observe(elapsed)
        self.metrics.snapshot_bytes.set(manifest.total_bytes)
        for tier, count in manifest.counts.items():
            self.metrics.snapshot_points.labels(tier).set(count)
        log.info("snapshot %s written to %s in %.2f s: %d L2 + %d L1 entries, %.1f MB",
                 manifest.snapshot_id, location.url, elapsed, manifest.counts.get("l2", 0),
                 manifest.counts.get("l1", 0), manifest.total_bytes / 1e6)
        return manifest

    async def hydrate(self, app: web.Application) -> bool:
        """Load the newest snapshot if the store is empty; True when done (or nothing to do)."""
        state = app[STATE]
        try:
            l2 = await state.cascade.l2_admin()
        except Exception as exc:  # noqa: BLE001 - the store opens later (embedder not up yet)
            log.warning("hydrate postponed: L2 cannot be opened yet (%s)", exc)
            return False
        if l2 is not None and await l2.points_count() > 0:
            log.info("not hydrating: L2 already holds %d entries (kept; it is at least as new as a snapshot)",
                     await l2.points_count())
            self.metrics.snapshots.labels("restore", "skipped").inc()
            return True
        started = time.perf_counter()
        location = self.location()
        try:
            identity = await model_identity(self.settings, state.cascade.tiers, l2)
            manifest, loaded = await restore_into_empty(location, identity, state.cascade.l1, l2)
        except SnapshotNotFound:
            log.info("no snapshot at %s yet: starting empty", location.url)
            self.metrics.snapshots.labels("restore", "skipped").inc()
            return True
        except SnapshotRefused as exc:
            log.error("hydrate refused, starting empty: %s", exc)
            self.metrics.snapshots.labels("restore", "refused").inc()
            return True
        except Exception:
            log.exception("hydrate from %s failed, starting empty", location.url)
            self.metrics.snapshots.labels("restore", "failed").inc()
            return True
        elapsed = time.perf_counter() - started
        self.hydrated = loaded
        await asyncio.to_thread(write_identity_marker, self.settings.l2, identity)
        self.metrics.snapshots.labels("restore", "ok").inc()
        self.metrics.snapshot_seconds.labels("restore").observe(elapsed)
        self.metrics.snapshot_bytes.set(manifest.total_bytes)
        for tier, count in loaded.items():
            self.metrics.snapshot_points.labels(tier).set(count)
        log.info("hydrated from snapshot %s (%s) in %.2f s: %d L2 + %d L1 entries",
                 manifest.snapshot_id, location.url, elapsed, loaded["l2"], loaded["l1"])
        return True

    async def dehydrate(self, app: web.Application) -> None:
        if self.location_url is None:
            return
        redis_url = self.settings.l1.redis_url.get_secret_value() if self.settings.l1.redis_url else None
        try:
            async with snapshot_lock(redis_url, self.location_url, self.settings.lifecycle.snapshot_lock_secs):
                await self.snapshot(app)
        except SnapshotLockBusy:
            log.info("dehydrate skipped: another gateway is writing a snapshot of the shared store now")
            self.metrics.snapshots.labels("create", "skipped").inc()
        except Exception:
            log.exception("dehydrate to %s failed; the previous snapshots are intact", self.location_url)

    async def watch_idle(self, app: web.Application, timeout: float) -> None:
        state = app[STATE]
        while not self.stop_requested.is_set():
            idle = time.monotonic() - self.last_activity
            if idle >= timeout and state.inflight == 0:
                self.stop_reason = f"idle: no API request for {idle:.0f} s (REFLEX_IDLE_TIMEOUT_SECS={timeout:g})"
                log.info("stopping: %s; dehydrating and exiting 0", self.stop_reason)
                self.stop_requested.set()
                return
            await asyncio.sleep(min(max(timeout - idle, 0.05), 1.0))

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # a strong reference, or the loop may drop it mid-flight
        task.add_done_callback(self._tasks.discard)

    async def _hydrate_until_done(self, app: web.Application) -> None:
        while not await self.hydrate(app):
            await asyncio.sleep(2.0)

    async def start(self, app: web.Application) -> None:
        if self.location_url is not None and not await self.hydrate(app):
            self.spawn(self._hydrate_until_done(app))
        if self.settings.lifecycle.idle_timeout_secs is not None:
            self.spawn(self.watch_idle(app, self.settings.lifecycle.idle_timeout_secs))

    async def stop(self, app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # in-flight requests are done (the runner waited for them); now the cache writes they left
        await app[STATE].drain(timeout=self.settings.http.shutdown_grace_secs)
        await self.dehydrate(app)


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)


async def lifecycle_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx entry, last in the list: it starts after the state exists and stops first."""
    lifecycle = Lifecycle(app[STATE].settings, app[STATE].metrics)
    app[LIFECYCLE] = lifecycle
    await lifecycle.start(app)
    yield
    await lifecycle.stop(app)
