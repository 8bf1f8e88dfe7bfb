"""``reflex snapshot create DEST | restore SRC | list DEST``: snapshots of the cache, to and from a
local directory or ``gs://bucket/prefix`` (format and safety: services/gateway/snapshot.py).

- ``create DEST`` snapshots the configured L2 store (REFLEX_STORAGE_PATH / REFLEX_QDRANT_URL).
  An embedded shard belongs to one process, so while a gateway serves it, ask that gateway:
  ``--gateway URL`` calls its admin API (REFLEX_ADMIN_TOKEN), which also includes its in-process
  L1 entries and takes the snapshot without stopping traffic.
- ``restore SRC`` replaces the configured L2 store with the newest snapshot at SRC (or ``--id``),
  after checking the manifest and checksums; a snapshot of another embedding model or dimension
  is refused (exit 3). Run it with the gateway stopped (an embedded shard is locked by its
  process); in-process L1 entries are loaded by a gateway that hydrates from SRC at start
  (REFLEX_SNAPSHOT_URL), not by this command, which has no L1 to load them into.
- ``list DEST`` prints the complete snapshots, newest first.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.error
import urllib.request

import orjson

from reflex.settings import GatewaySettings

EXIT_ERROR = 1
EXIT_REFUSED = 3


def main(argv: list[str], settings: GatewaySettings) -> int:
    parser = argparse.ArgumentParser(prog="reflex snapshot", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="write a snapshot of the cache to DEST")
    create.add_argument("dest", help="a local directory or gs://bucket/prefix")
    create.add_argument("--gateway", metavar="URL", help="ask this running gateway (its admin API) to take it")
    restore = sub.add_parser("restore", help="replace the configured L2 store with a snapshot from SRC")
    restore.add_argument("src", help="a local directory or gs://bucket/prefix")
    restore.add_argument("--id", dest="snapshot_id", help="this snapshot instead of the newest")
    listing = sub.add_parser("list", help="the snapshots at DEST, newest first")
    listing.add_argument("dest")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)

    from services.gateway.snapshot import SnapshotError, SnapshotRefused

    try:
        if args.action == "create":
            if args.gateway:
                return _create_via_gateway(args.gateway, args.dest, settings)
            return asyncio.run(_create(settings, args.dest))
        if args.action == "restore":
            return asyncio.run(_restore(settings, args.src, args.snapshot_id))
        return _list(args.dest, as_json=args.json)
    except SnapshotRefused as exc:
        print(f"reflex snapshot: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except SnapshotError as exc:
        print(f"reflex snapshot: {exc}", file=sys.stderr)
        return EXIT_ERROR


async def _create(settings: GatewaySettings, dest: str) -> int:
    from services.gateway.lifecycle import Sources, offline_identity, open_existing_store, write_snapshot
    from services.gateway.snapshot import ModelIdentity, open_location
    from services.gateway.snapshot import SnapshotError

    try:
        opened = await open_existing_store(settings.l2)
    except Exception as exc:  # noqa: BLE001 - a locked shard or an unreachable server: say which
        raise SnapshotError(f"cannot open the L2 store ({exc}); while a gateway serves it, use --gateway URL") from exc
    store, backend = opened if opened is not None else (None, None)
    try:
        identity = await offline_identity(settings, store) or ModelIdentity(None, None, None)
        started = time.perf_counter()
        location = open_location(dest)
        manifest = await write_snapshot(location, Sources(identity, None, store, backend),
                                        keep=settings.lifecycle.snapshot_keep)
    finally:
        if store is not None:
            await store.close()
    print(f"snapshot {manifest.snapshot_id} written to {location.url} in {time.perf_counter() - started:.2f} s: "
          f"{manifest.counts.get('l2', 0)} L2 entries, {manifest.total_bytes / 1e6:.1f} MB")
    return 0


def _create_via_gateway(url: str, dest: str, settings: GatewaySettings) -> int:
    from services.gateway.snapshot import SnapshotError

    token = settings.admin.admin_token
    if token is None:
        raise SnapshotError("--gateway needs REFLEX_ADMIN_TOKEN (the gateway's admin token)")
    request = urllib.request.Request(
        url.rstrip("/") + "/admin/v1/snapshots", data=orjson.dumps({"url": dest}), method="POST",
        headers={"Authorization": f"Bearer {token.get_secret_value()}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as reply:
            manifest = orjson.loads(reply.read())
    except urllib.error.HTTPError as exc:
        raise SnapshotError(f"the gateway answered {exc.code}: {exc.read().decode(errors='replace')}") from exc
    except OSError as exc:
        raise SnapshotError(f"cannot reach the gateway at {url}: {exc}") from exc
    print(f"snapshot {manifest['snapshot_id']} written by {url}: {manifest['counts']}")
    return 0


async def _restore(settings: GatewaySettings, src: str, snapshot_id: str | None) -> int:
    from services.gateway.lifecycle import (
        offline_identity,
        open_existing_store,
        restore_edge_offline,
        restore_replacing,
    )
    from services.gateway.snapshot import SnapshotError, open_location

    location = open_location(src)
    started = time.perf_counter()
    if settings.l2.qdrant_url:
        opened = await open_existing_store(settings.l2)
        if opened is None:
            raise SnapshotError(f"collection {settings.l2.collection!r} does not exist: start a gateway once to create it")
        store, _ = opened
        try:
            identity = await offline_identity(settings, store)
            assert identity is not None
            manifest, loaded = await restore_replacing(location, identity, store, snapshot_id)
        finally:
            await store.close()
    else:
        opened = None
        try:
            opened = await open_existing_store(settings.l2)
        except Exception as exc:  # noqa: BLE001
            raise SnapshotError(f"cannot open the L2 shard ({exc}); stop the gateway that holds it first") from exc
        store = opened[0] if opened is not None else None
        try:
            identity = await offline_identity(settings, store)
        finally:
            if store is not None:
                await store.close()
        manifest, loaded = await restore_edge_offline(settings.l2, location, identity, snapshot_id)
    print(f"restored snapshot {manifest.snapshot_id} from {location.url} in {time.perf_counter() - started:.2f} s: "
          f"{loaded['l2']} L2 entries"
          + (f" ({manifest.counts['l1']} in-process L1 entries load when a gateway hydrates from it)"
             if manifest.counts.get("l1") else ""))
    return 0


def _list(dest: str, *, as_json: bool) -> int:
    from services.gateway.snapshot import open_location

    location = open_location(dest)
    for manifest in location.list():
        if as_json:
            print(manifest.to_bytes().replace(b"\n", b"").decode())
            continue
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(manifest.created_at))
        print(f"{manifest.snapshot_id}  {created}Z  l2={manifest.counts.get('l2', 0)} l1={manifest.counts.get('l1', 0)}  "
              f"{manifest.total_bytes / 1e6:.1f} MB  {manifest.embedder or '?'} ({manifest.dimension or '?'}-d)")
    return 0
