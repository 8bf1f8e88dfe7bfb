"""Snapshots of the cache: the format, and the two places they are kept (a directory, or GCS).

A snapshot is a folder ``<location>/<snapshot id>/`` of three files:

- ``l2.bin.gz``: every live L2 point as stored (id, float32 vector, payload), so a restored entry
  keeps its id, its vector and its original expiry, and no model runs on restore;
- ``l1.bin.gz``: the in-process L1 entries (key, value, tags, expiry). A Redis L1 is not copied:
  it is shared by the replicas and outlives them, and Redis's own persistence (RDB/AOF) is the
  way to keep it;
- ``manifest.json``: format version, snapshot id, creation time, the embedding model's name and
  dimension, the verifier's id, the entry count of each part and each part's sha256 and size.

Both parts are a gzip stream of length-prefixed records (``_Writer``/``_records``). The L2 part is
read from the store page by page (each page one short call on the store, so serving goes on
between pages) rather than copied as the engine's files: Qdrant Edge has no way to take a
consistent copy of an open shard, a copy of its files while it writes is not one, and a copy
taken with the shard paused would stop every search for the length of the copy. The price is
that a snapshot is not a single instant: an entry written while the export runs may or may not be
in it (each entry is either whole or absent), which is fine for a cache. The same format serves
the embedded shard and a Qdrant server, so a snapshot also moves a cache from one to the other.

Atomicity. Locally, the parts and the manifest are written into ``.incomplete-<id>/``, fsynced,
and the folder is renamed to ``<id>`` (one rename, the commit). On GCS the parts are uploaded
first and the manifest last, each with ``if_generation_match=0`` (never overwriting). Only a
folder with a manifest is a snapshot, so a crash at any point leaves nothing that restores, and
the previous snapshots untouched; leftovers are removed by the next create.
"""

from __future__ import annotations

import array
import contextlib
import gzip
import hashlib
import logging
import os
import secrets
import shutil
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from services.gateway.l1 import L1Tags
from services.gateway.l2.schema import RawPoint

log = logging.getLogger("reflex.gateway.snapshot")

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
L2_PART = "l2.bin.gz"
L1_PART = "l1.bin.gz"
INCOMPLETE = ".incomplete-"
# Level 1: the parts are mostly float32 vectors (which barely compress) and base64 answers; a
# higher level costs several times the CPU, on the machine that is serving, for a few percent.
_GZIP_LEVEL = 1
_LEN = struct.Struct("<I")


class SnapshotError(Exception):
    """A snapshot cannot be read or written (I/O, a missing or damaged part)."""


class SnapshotRefused(SnapshotError):
    """A snapshot that must not be restored here: another embedding model or dimension, another
    format version, or a checksum that does not match. The message says which and what to do."""


class SnapshotNotFound(SnapshotError):
    pass


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """What the stored vectors depend on. ``embedder`` None: unknown (a stand-in without Info)."""

    embedder: str | None
    dimension: int | None
    verifier: str | None = None


@dataclass(frozen=True, slots=True)
class PartInfo:
    sha256: str
    bytes: int
    records: int


@dataclass(frozen=True, slots=True)
class Manifest:
    snapshot_id: str
    created_at: float
    embedder: str | None
    dimension: int | None
    verifier: str | None
    l1_backend: str
    l2_backend: str | None
    parts: dict[str, PartInfo] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def counts(self) -> dict[str, int]:
        return {name.split(".")[0]: p.records for name, p in self.parts.items()}

    @property
    def total_bytes(self) -> int:
        return sum(p.bytes for p in self.parts.values())

    def to_bytes(self) -> bytes:
        body = asdict(self)
        body["counts"] = self.counts
        return orjson.dumps(body, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            obj = orjson.loads(data)
            if obj.get("format_version") != FORMAT_VERSION:
                raise SnapshotRefused(
                    f"snapshot format version {obj.get('format_version')!r}; this Reflex reads version "
                    f"{FORMAT_VERSION} only"
                )
            parts = {name: PartInfo(**p) for name, p in obj["parts"].items()}
            return cls(
                snapshot_id=str(obj["snapshot_id"]), created_at=float(obj["created_at"]),
                embedder=obj["embedder"], dimension=obj["dimension"], verifier=obj["verifier"],
                l1_backend=str(obj["l1_backend"]), l2_backend=obj["l2_backend"], parts=parts,
            )
        except SnapshotRefused:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SnapshotRefused(f"unreadable snapshot manifest ({exc})") from exc

    def check_compatible(self, current: ModelIdentity) -> None:
        """Refuse a snapshot whose vectors another model made (when both sides know their model).

        Vectors of another model (or dimension) would be compared with this embedder's: searches
        would return nonsense neighbours, so the verifier would see the wrong candidates. The
        verifier id is informational: it scores at lookup time, whichever verifier wrote the entry.
        """
        if self.parts.get(L2_PART, PartInfo("", 0, 0)).records == 0:
            return  # no vectors: nothing depends on the model
        if current.dimension is not None and self.dimension is not None and current.dimension != self.dimension:
            raise SnapshotRefused(
                f"snapshot {self.snapshot_id} holds {self.dimension}-d vectors of {self.embedder!r}; this gateway's "
                f"embedder makes {current.dimension}-d vectors ({current.embedder!r}). Restore it with the model it "
                "was made with, or start without it (the cache refills)."
            )
        if current.embedder is not None and self.embedder is not None and current.embedder != self.embedder:
            raise SnapshotRefused(
                f"snapshot {self.snapshot_id} was made with embedding model {self.embedder!r}; this gateway embeds "
                f"with {current.embedder!r}. Its vectors would not match this model's: restore it with "
                f"{self.embedder!r}, or start without it (the cache refills)."
            )


def new_snapshot_id(now: float | None = None) -> str:
    """Sortable by time (UTC), unique by a random suffix: ``20250102T030405Z-1a2b3c``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{secrets.token_hex(3)}"


# ---------------------------------------------------------------------------- the part format
class _Writer:
    """Writes one part: a gzip stream of records, each ``<u32 length><bytes>``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records = 0
        self._raw: IO[bytes] = path.open("wb")
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=_GZIP_LEVEL, mtime=0)

    def write(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self._gz.write(_LEN.pack(len(chunk)))
            self._gz.write(chunk)

    def close(self) -> PartInfo:
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        return PartInfo(sha256=_sha256(self.path), bytes=self.path.stat().st_size, records=self.records)


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise SnapshotError("a snapshot part ends in the middle of a record")
    return data


def _records(path: Path, fields: int) -> Iterator[list[bytes]]:
    """Each record of a part as its ``fields`` chunks."""
    try:
        with gzip.open(path, "rb") as stream:
            while True:
                head = stream.read(_LEN.size)
                if not head:
                    return
                if len(head) != _LEN.size:
                    raise SnapshotError("a snapshot part ends in the middle of a record")
                first = _read_exact(stream, _LEN.unpack(head)[0])
                rest = [_read_exact(stream, _LEN.unpack(_read_exact(stream, _LEN.size))[0]) for _ in range(fields - 1)]
                yield [first, *rest]
    except (EOFError, gzip.BadGzipFile, OSError) as exc:
        raise SnapshotError(f"unreadable snapshot part {path.name} ({exc})") from exc


def _floats(vector: Sequence[float]) -> bytes:
    values = array.array("f", vector)
    if sys.byteorder == "big":
        values.byteswap()  # the format is little-endian on every machine
    return values.tobytes()


def _unfloats(data: bytes) -> list[float]:
    values = array.array("f")
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def write_l2_page(writer: _Writer, page: Sequence[RawPoint]) -> None:
    for p in page:
        writer.write(uuid.UUID(p.point_id).bytes, _floats(p.vector), orjson.dumps(p.payload))
        writer.records += 1


def read_l2(path: Path, *, page: int = 512) -> Iterator[list[RawPoint]]:
    batch: list[RawPoint] = []
    for point_id, vector, payload in _records(path, 3):
        batch.append(RawPoint(str(uuid.UUID(bytes=point_id)), _unfloats(vector), orjson.loads(payload)))
        if len(batch) >= page:
            yield batch
            batch = []
    if batch:
        yield batch


L1Record = tuple[str, bytes, L1Tags | None, float]


def write_l1(writer: _Writer, entries: Sequence[L1Record]) -> None:
    for key, value, tags, expires_at in entries:
        meta = [key, expires_at, *( [tags.tenant, tags.model, tags.context_hash] if tags else [None, None, None])]
        writer.write(orjson.dumps(meta), value)
        writer.records += 1


def read_l1(path: Path) -> Iterator[L1Record]:
    for meta, value in _records(path, 2):
        key, expires_at, tenant, model, context = orjson.loads(meta)
        yield key, value, L1Tags(tenant, model, context) if tenant is not None else None, float(expires_at)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_parts(manifest: Manifest, folder: Path) -> None:
    """Raise SnapshotRefused unless every part is there with the manifest's size and checksum."""
    for name, info in manifest.parts.items():
        path = folder / name
        if not path.exists():
            raise SnapshotRefused(f"snapshot {manifest.snapshot_id} lacks its part {name}")
        if path.stat().st_size != info.bytes or _sha256(path) != info.sha256:
            raise SnapshotRefused(
                f"snapshot {manifest.snapshot_id}: part {name} does not match its checksum (damaged or "
                "incomplete); nothing was restored from it"
            )


# ---------------------------------------------------------------------------- where snapshots live
class Location:
    """A place holding snapshots: ``list``, ``stage`` + ``commit`` (atomic), ``fetch``, ``delete``."""

    url: str

    def list(self) -> list[Manifest]:
        """Complete snapshots, newest first."""
        raise NotImplementedError

    def stage(self, snapshot_id: str) -> Path:
        """A local folder to write the parts of a new snapshot into."""
        raise NotImplementedError

    def commit(self, staged: Path, manifest: Manifest) -> None:
        """Publish the staged parts, then the manifest: the snapshot exists once this returns."""
        raise NotImplementedError

    def abandon(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    @contextlib.contextmanager
    def fetch(self, snapshot_id: str | None = None) -> Iterator[tuple[Manifest, Path]]:
        """The manifest and a local folder with the verified parts of one snapshot (the newest when
        ``snapshot_id`` is None). Raises SnapshotNotFound, SnapshotRefused."""
        raise NotImplementedError
        yield  # pragma: no cover

    def delete(self, snapshot_id: str) -> None:
        raise NotImplementedError

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest snapshots, and leftovers of interrupted writes."""
        removed = [m.snapshot_id for m in self.list()[keep:]]
        for snapshot_id in removed:
            self.delete(snapshot_id)
        return removed

    def _pick(self, snapshot_id: str | None) -> Manifest:
        snapshots = self.list()
        if snapshot_id is None:
            if not snapshots:
                raise SnapshotNotFound(f"no snapshot at {self.url}")
            return snapshots[0]
        for manifest in snapshots:
            if manifest.snapshot_id == snapshot_id:
                return manifest
        raise SnapshotNotFound(f"no snapshot {snapshot_id!r} at {self.url}")


class LocalLocation(Location):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def list(self) -> list[Manifest]:
        if not self.root.is_dir():
            return []
        found = []
        for folder in self.root.iterdir():
            manifest = folder / MANIFEST
            if folder.name.startswith(".") or not manifest.is_file():
                continue
            try:
                found.append(Manifest.from_bytes(manifest.read_bytes()))
            except SnapshotRefused as exc:
                log.warning("skipping %s: %s", folder, exc)
        return sorted(found, key=lambda m: (m.created_at, m.snapshot_id), reverse=True)

    def stage(self, snapshot_id: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        staged = self.root / f"{INCOMPLETE}{snapshot_id}"
        staged.mkdir()
        return staged

    def commit(self, staged: Path, manifest: Manifest) -> None:
        path = staged / MANIFEST
        with path.open("wb") as f:
            f.write(manifest.to_bytes())
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(staged)
        os.rename(staged, self.root / manifest.snapshot_id)  # the commit: atomic on one filesystem
        _fsync_dir(self.root)

    @contextlib.contextmanager
    def fetch(self, snapshot_id: str | None = None) -> Iterator[tuple[Manifest, Path]]:
        manifest = self._pick(snapshot_id)
        folder = self.root / manifest.snapshot_id
        verify_parts(manifest, folder)
        yield manifest, folder

    def delete(self, snapshot_id: str) -> None:
        shutil.rmtree(self.root / snapshot_id, ignore_errors=True)

    def prune(self, keep: int) -> list[str]:
        removed = super().prune(keep)
        if self.root.is_dir():
            for folder in self.root.glob(f"{INCOMPLETE}*"):
                shutil.rmtree(folder, ignore_errors=True)  # a write that died (kill -9, full disk)
        return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class GcsLocation(Location):
    """``gs://bucket/prefix`` through google-cloud-storage (application default credentials; the
    library's own STORAGE_EMULATOR_HOST points it at an emulator)."""

    # Parts of a snapshot whose manifest never came are removed by prune only after this long, so
    # a prune never deletes the parts of a snapshot that another process is still uploading.
    ABANDONED_AFTER_SECS = 3600.0

    def __init__(self, bucket: str, prefix: str, client: Any | None = None) -> None:
        from google.cloud import storage  # the GCS client is only imported where snapshots go to GCS

        self._client = client if client is not None else storage.Client()
        self._bucket = self._client.bucket(bucket)
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"gs://{bucket}/{self._prefix}".rstrip("/")

    def _name(self, snapshot_id: str, part: str) -> str:
        return f"{self._prefix}{snapshot_id}/{part}"

    def list(self) -> list[Manifest]:
        found = []
        for blob in self._client.list_blobs(self._bucket, prefix=self._prefix):
            rest = blob.name[len(self._prefix):]
            if rest.count("/") != 1 or not rest.endswith("/" + MANIFEST):
                continue
            try:
                found.append(Manifest.from_bytes(blob.download_as_bytes()))
            except SnapshotRefused as exc:
                log.warning("skipping gs://%s/%s: %s", self._bucket.name, blob.name, exc)
        return sorted(found, key=lambda m: (m.created_at, m.snapshot_id), reverse=True)

    def stage(self, snapshot_id: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"reflex-snapshot-{snapshot_id}-"))

    def commit(self, staged: Path, manifest: Manifest) -> None:
        try:
            for name in manifest.parts:
                blob = self._bucket.blob(self._name(manifest.snapshot_id, name))
                blob.upload_from_filename(str(staged / name), if_generation_match=0)
            blob = self._bucket.blob(self._name(manifest.snapshot_id, MANIFEST))
            blob.upload_from_string(manifest.to_bytes(), content_type="application/json", if_generation_match=0)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    @contextlib.contextmanager
    def fetch(self, snapshot_id: str | None = None) -> Iterator[tuple[Manifest, Path]]:
        manifest = self._pick(snapshot_id)
        folder = Path(tempfile.mkdtemp(prefix=f"reflex-restore-{manifest.snapshot_id}-"))
        try:
            for name in manifest.parts:
                blob = self._bucket.blob(self._name(manifest.snapshot_id, name))
                blob.download_to_filename(str(folder / name))
            verify_parts(manifest, folder)
            yield manifest, folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def delete(self, snapshot_id: str) -> None:
        # the manifest first: from then on the snapshot no longer exists, whatever happens next
        for blob in sorted(self._client.list_blobs(self._bucket, prefix=f"{self._prefix}{snapshot_id}/"),
                           key=lambda b: not b.name.endswith(MANIFEST)):
            blob.delete()

    def prune(self, keep: int) -> list[str]:
        removed = super().prune(keep)
        complete = {m.snapshot_id for m in self.list()}
        cutoff = time.time() - self.ABANDONED_AFTER_SECS
        for blob in self._client.list_blobs(self._bucket, prefix=self._prefix):
            snapshot_id = blob.name[len(self._prefix):].split("/")[0]
            if snapshot_id not in complete and blob.updated is not None and blob.updated.timestamp() < cutoff:
                blob.delete()
        return removed


def open_location(url: str, *, gcs_client: Any | None = None) -> Location:
    """A local path, ``file://PATH`` or ``gs://bucket/prefix``."""
    if url.startswith("gs://"):
        bucket, _, prefix = url.removeprefix("gs://").partition("/")
        return GcsLocation(bucket, prefix, client=gcs_client)
    return LocalLocation(Path(url.removeprefix("file://")).expanduser())


def new_writer(folder: Path, part: str) -> _Writer:
    return _Writer(folder / part)
