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
from collections.abc import Mapping, Sequence
from typing import Any

import blake3

from reflex.tiers import L2Candidate, L2Point, L2Scope, TierUnavailable

# Payload keys. The three keyword fields and expires_at are indexed: every search filters on all
# four inside Qdrant, so a tenant never even scores another tenant's vectors.
TENANT = "tenant"
MODEL = "model"
CONTEXT_HASH = "context_hash"
EXPIRES_AT = "expires_at"  # unix seconds (float); a point is live while expires_at > now
QUESTION = "question"
ENTRY = "entry"  # the serialized CachedEntry, base64: the payload is JSON, the entry is bytes
ENTRY_ID = "entry_id"

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


def build_payload(point: L2Point, *, expires_at: float) -> dict[str, Any]:
    return {
        **dict(scope_conditions(point.scope)),
        EXPIRES_AT: expires_at,
        QUESTION: point.question,
        ENTRY: base64.b64encode(point.entry).decode("ascii"),
        ENTRY_ID: point.entry_id,
    }


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
