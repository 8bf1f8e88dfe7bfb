"""The contracts between the gateway and its semantic tiers.

The gateway's cascade (L1 exact -> L2 vector search -> L3 verifier) talks only to these
protocols. Each has a production implementation (gRPC clients for the model services,
Qdrant Edge or a Qdrant server for L2) and the tests use the same real implementations;
keeping the seam here lets ``reflex serve`` run everything in one process and Kubernetes
run it as separate pods without the gateway knowing which.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


class TierUnavailable(Exception):
    """A semantic tier failed, timed out or is overloaded.

    The gateway never turns this into an error for the caller: the request falls back to
    L1 plus upstream (a plain miss), a metric counts it by ``component`` and ``reason``,
    and ``/ready`` reports the component until it answers again.
    """

    def __init__(self, component: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{component} unavailable ({reason}){': ' + detail if detail else ''}")
        self.component = component
        self.reason = reason  # short, low-cardinality: "timeout", "overloaded", "unavailable", "error"
        self.detail = detail


class Embedder(Protocol):
    async def embed(self, texts: Sequence[str], *, timeout: float) -> list[list[float]]:
        """Unit-length vectors, one per text, in order. Raises TierUnavailable."""

    async def check(self) -> None:
        """Raise TierUnavailable unless the service reports SERVING (used by /ready)."""

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ServerTiming:
    """A model service's own account of one call (the Timing block in the protos), in seconds."""

    queue_s: float
    tokenize_s: float
    inference_s: float

    @classmethod
    def from_ns(cls, queue_ns: int, tokenize_ns: int, inference_ns: int) -> "ServerTiming":
        """From the nanoseconds the servers count in (the protos' Timing, the batcher's)."""
        return cls(queue_ns / 1e9, tokenize_ns / 1e9, inference_ns / 1e9)


# Called after every successful model call with (component, timing), e.g. to feed the
# gateway's histograms. A callback rather than a "last timing" attribute: calls run concurrently.
TimingCallback = Callable[[str, ServerTiming], None]


class Verifier(Protocol):
    async def score(
        self, query: str, candidates: Sequence[str], cosines: Sequence[float] | None = None, *, timeout: float,
        min_score: float = 0.0,
    ) -> list[float]:
        """One probability in [0, 1] per candidate, in order, from a single call. Raises TierUnavailable.

        ``cosines``: the embedder cosine of each candidate to the query (L2's similarity), one
        per candidate, or None when unknown. The verifier's decision model uses them; without
        them it answers the cross-encoder's probability alone (see verifier.proto).
        ``min_score``: the lowest score the caller can use; a candidate that cannot reach it
        may get an upper bound below it instead of its exact score (0: exact scores for all)."""

    async def check(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class L2Scope:
    """The entries one lookup may see: one tenant, one model, one context (everything but the
    question). Every search is filtered on all three inside the store, so a tenant never even
    scores another tenant's vectors, and an answer is never served into another context."""

    tenant: str
    model: str
    context_hash: str


@dataclass(frozen=True, slots=True)
class L2Point:
    """One cached answer as L2 stores it."""

    entry_id: str  # the L1 key (hex) of the entry: storing the same request again overwrites it
    scope: L2Scope
    question: str  # the text that was embedded: what a later question is compared with
    vector: Sequence[float]
    entry: bytes  # the serialized CachedEntry, so a hit costs one round trip
    ttl_secs: int


@dataclass(frozen=True, slots=True)
class L2Candidate:
    entry_id: str  # the L1 key (hex) of the entry that stored it
    question: str  # the last user message text the cached answer was produced for
    similarity: float  # cosine similarity to the query vector
    entry: bytes  # the serialized CachedEntry, so a hit costs one round trip


class L2Store(Protocol):
    async def search(
        self, scope: L2Scope, vector: Sequence[float], *, top_k: int, min_similarity: float
    ) -> list[L2Candidate]:
        """Nearest live entries of ``scope`` (filtered inside Qdrant, never in Python), with
        similarity >= min_similarity, best first. Raises TierUnavailable."""

    async def has_entries(self, scope: L2Scope) -> bool:
        """Whether ``scope`` holds any live entry. Most scopes a lookup meets are empty (every
        new conversation is a context of its own), and a lookup there need not wait for its
        question's embedding. Raises TierUnavailable."""

    async def upsert(self, point: L2Point) -> None:
        """Write (or overwrite) one entry; visible to the next search once this returns."""

    async def check(self) -> None:
        """Raise TierUnavailable unless the store answers (used by /ready)."""

    async def close(self) -> None: ...


# What ``reflex serve`` hands the gateway for the models it runs itself: given the gateway's
# timing callback, the clients that call them in process (None for a model reached by URL).
ModelClientFactory = Callable[[TimingCallback], "tuple[Embedder | None, Verifier | None]"]
