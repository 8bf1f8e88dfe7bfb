"""What an L2 point holds, shared by the embedded (Qdrant Edge) and remote (qdrant-client) backends.

Both backends store the same payload under the same point ids and filter on the same fields, so
an operator can move from the embedded shard to a Qdrant server (or back) and reason about both
the same way. Only the client classes that express it differ; they live in ``edge.py`` and
``remote.py``.
"""

from __future__ import annotations

import base64
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import blake3

from reflex.tiers import L2Candidate, L2Point, L2Scope, TierUnavailable
from services.gateway.selection import Selection

# Payload keys. The three keyword fields and expires_at are indexed: every search filters on all
# four inside Qdrant, so a tenant never even scores another tenant's vectors.
TENANT = "tenant"
MODEL = "model"
CONTEXT_HASH = "context_hash"
EXPIRES_AT = "expires_at"  # unix seconds (float); a point is live while expires_at > now
QUESTION = "question"
ENTRY = "entry"  # the serialized CachedEntry, base64: the payload is JSON, the entry is bytes
ENTRY_ID = "entry_id"
# Written since the lifecycle release (points stored before lack them; ``stored_point`` derives
# them): when the entry was stored, for ``older_than`` invalidation and oldest-first eviction, and
# what it costs in the store, for per-tenant byte caps and stats.
CREATED_AT = "created_at"
SIZE_BYTES = "size_bytes"

KEYWORD_FIELDS = (TENANT, MODEL, CONTEXT_HASH)
# What a search returns: just enough to build an L2Candidate, not the filter fields it matched on.
RETURNED_FIELDS = [ENTRY_ID, QUESTION, ENTRY]

COMPONENT = "l2"  # TierUnavailable.component for every L2 failure


def point_id(entry_id: str) -> uuid.UUID:
    """The point id of an entry: a UUID derived deterministically from its entry id.

    Qdrant ids are unsigned ints or UUIDs, and entry ids are 64-hex blake3 digests. Hashing (rather
    than slicing the hex) accepts any string and still maps the same entry to the same point, so
    storing the same request again overwrites it instead of adding a duplicate candidate.
    """
    return uuid.UUID(bytes=blake3.blake3(entry_id.encode()).digest(length=16))


def scope_conditions(scope: L2Scope) -> tuple[tuple[str, str], ...]:
    """The keyword field and value of each scope condition a search must match, in index order
    (``KEYWORD_FIELDS``). Each backend wraps them in its own client's condition class."""
    return ((TENANT, scope.tenant), (MODEL, scope.model), (CONTEXT_HASH, scope.context_hash))


def build_payload(point: L2Point, *, expires_at: float, created_at: float | None = None) -> dict[str, Any]:
    return {
        **dict(scope_conditions(point.scope)),
        EXPIRES_AT: expires_at,
        QUESTION: point.question,
        ENTRY: base64.b64encode(point.entry).decode("ascii"),
        ENTRY_ID: point.entry_id,
        CREATED_AT: time.time() if created_at is None else created_at,
        SIZE_BYTES: point_size(len(point.vector), point.question, len(point.entry)),
    }


def point_size(dimension: int, question: str, entry_len: int) -> int:
    """What one entry costs the store, as the tenant byte cap counts it: the float32 vector, the
    question and the cached entry (indexes and quantized copies are the store's overhead, not
    the tenant's)."""
    return 4 * dimension + len(question.encode("utf-8")) + entry_len


def prepare(point: L2Point, dimension: int) -> tuple[uuid.UUID, list[float], dict[str, Any]]:
    """The id, vector and payload to store for ``point``, expiring ``point.ttl_secs`` from now.

    Raises ValueError for a TTL that is not positive, TierUnavailable for a vector the store
    cannot hold (see ``check_vector``).
    """
    check_ttl(point.ttl_secs)
    return (
        point_id(point.entry_id),
        check_vector(point.vector, dimension),
        build_payload(point, expires_at=time.time() + point.ttl_secs),
    )


def candidate(payload: Mapping[str, Any] | None, score: float) -> L2Candidate:
    if not payload:
        raise TierUnavailable(COMPONENT, "error", "a point without payload was returned")
    return L2Candidate(
        entry_id=payload[ENTRY_ID],
        question=payload[QUESTION],
        similarity=float(score),
        entry=base64.b64decode(payload[ENTRY]),
    )


def check_vector(vector: Sequence[float], dimension: int) -> list[float]:
    """The vector as a list of floats, or TierUnavailable when it cannot be stored.

    A wrong dimension is not a caller bug we can fix at run time: it means the embedder now serves
    another model than the one this store was opened for. Reporting it as the tier being
    unavailable keeps the gateway answering (L1 plus upstream) and names the cause in /ready.
    """
    if len(vector) != dimension:
        raise TierUnavailable(
            COMPONENT, "dimension", f"vector has {len(vector)} dimensions, the store holds {dimension}"
        )
    values = [float(x) for x in vector]
    if not all(math.isfinite(x) for x in values):
        raise TierUnavailable(COMPONENT, "error", "vector has NaN or infinite components")
    return values


def check_ttl(ttl_secs: int) -> None:
    if ttl_secs <= 0:
        raise ValueError(f"ttl_secs must be positive, got {ttl_secs}")


# ---------------------------------------------------------------------------- administration and snapshots
# What an admin scan reads of each point: everything but the (large) entry and the vector.
SCAN_FIELDS = [ENTRY_ID, TENANT, MODEL, CONTEXT_HASH, QUESTION, EXPIRES_AT, CREATED_AT, SIZE_BYTES]


@dataclass(frozen=True, slots=True)
class StoredPoint:
    """One L2 point as the admin API, the caps and the stats see it."""

    point_id: str
    entry_id: str
    tenant: str
    model: str
    context_hash: str
    question: str
    expires_at: float
    created_at: float  # 0.0 for points stored before the field existed: they count as the oldest
    size_bytes: int
    entry: bytes | None = None  # only when the caller asked for it (retrieve)

    def matches(self, selection: Selection, now: float) -> bool:
        return selection.matches(tenant=self.tenant, model=self.model, context_hash=self.context_hash,
                                 created_at=self.created_at, question=self.question, now=now)


def stored_point(point_id: object, payload: Mapping[str, Any], dimension: int) -> StoredPoint:
    question = str(payload.get(QUESTION, ""))
    entry = payload.get(ENTRY)
    size = payload.get(SIZE_BYTES)
    if size is None:  # a point from before the field: derive it (base64 is 4/3 of the bytes)
        size = point_size(dimension, question, len(entry) * 3 // 4 if isinstance(entry, str) else 0)
    return StoredPoint(
        point_id=str(point_id),
        entry_id=str(payload.get(ENTRY_ID, "")),
        tenant=str(payload.get(TENANT, "")),
        model=str(payload.get(MODEL, "")),
        context_hash=str(payload.get(CONTEXT_HASH, "")),
        question=question,
        expires_at=float(payload.get(EXPIRES_AT, 0.0)),
        created_at=float(payload.get(CREATED_AT) or 0.0),
        size_bytes=int(size),
        entry=base64.b64decode(entry) if isinstance(entry, str) else None,
    )


@dataclass(frozen=True, slots=True)
class RawPoint:
    """A point exactly as stored (id, vector, payload): what a snapshot holds and restores, so a
    restored entry keeps its id, its vector and its original expiry."""

    point_id: str
    vector: list[float]
    payload: dict[str, Any]


class L2Admin(Protocol):
    """What the admin API, the caps and snapshots need of an L2 backend, beyond ``L2Store``.
    ``EdgeL2Store`` and ``RemoteL2Store`` implement it; tests/l2/test_admin_ops.py runs it on both."""

    dimension: int

    def scan(self, selection: Selection | None = None, *, page: int = 1000) -> AsyncIterator[list[StoredPoint]]: ...

    async def retrieve(self, entry_ids: Sequence[str]) -> list[StoredPoint]: ...

    async def delete_points(self, point_ids: Sequence[str]) -> None: ...

    def export_points(self, *, page: int = 512) -> AsyncIterator[list[RawPoint]]: ...

    async def import_points(self, points: Sequence[RawPoint]) -> None: ...

    async def clear(self) -> None: ...

    async def points_count(self) -> int: ...
