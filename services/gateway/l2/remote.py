"""The remote L2 store: a Qdrant server or cluster through ``qdrant_client.AsyncQdrantClient``.

Used when REFLEX_QDRANT_URL is set, which is what several gateway replicas need (an Edge shard
belongs to one process). The collection is created on first use with the same layout as the
embedded shard (``schema.py``): cosine distance, binary quantization kept in RAM, searches that
rescore with the full vectors, and payload indexes on every field a search filters by.

The same class also runs on qdrant-client's local mode (``location=":memory:"`` or ``path=``),
which is how the shared test suite exercises it without a server. Local mode searches exactly and
ignores payload indexes and search params (it warns about both); the results are the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TypeVar

from qdrant_client import AsyncQdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from reflex.tiers import L2Candidate, L2Point, L2Scope, TierUnavailable
from services.gateway.l2 import schema
from services.gateway.selection import Selection

log = logging.getLogger("reflex.gateway.l2.remote")

T = TypeVar("T")


def _filter(scope: L2Scope, now: float) -> qm.Filter:
    return qm.Filter(
        must=[
            *(
                qm.FieldCondition(key=key, match=qm.MatchValue(value=value))
                for key, value in schema.scope_conditions(scope)
            ),
            qm.FieldCondition(key=schema.EXPIRES_AT, range=qm.Range(gt=now)),
        ]
    )


def _keyword_filter(selection: Selection | None) -> qm.Filter | None:
    conditions = list(selection.keywords().items()) if selection is not None else []
    if not conditions:
        return None
    return qm.Filter(must=[qm.FieldCondition(key=key, match=qm.MatchValue(value=value)) for key, value in conditions])


def _reason(exc: BaseException) -> str:
    """A low-cardinality TierUnavailable reason for a client failure."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, (ResponseHandlingException, ConnectionError, OSError)):
        return "unavailable"  # could not reach the server (ResponseHandlingException wraps httpx's)
    if isinstance(exc, UnexpectedResponse) and exc.status_code in (502, 503, 504):
        return "unavailable"
    return "error"


class RemoteL2Store:
    """L2Store on a Qdrant collection. Build it with ``await RemoteL2Store.open(...)``.

    The store owns the client it is given and closes it in ``close()``.
    """

    def __init__(
        self,
        client: AsyncQdrantClient,
        collection: str,
        *,
        dimension: int,
        oversampling: float,
        timeout_secs: float,
        purge_interval_secs: float,
    ) -> None:
        self._client = client
        self._collection = collection
        self.dimension = dimension
        self._search_params = qm.SearchParams(
            quantization=qm.QuantizationSearchParams(rescore=True, oversampling=oversampling)
        )
        self._timeout_secs = timeout_secs
        self._purge_interval_secs = purge_interval_secs
        self._last_purge = time.monotonic()
        self._purges: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    async def open(
        cls,
        client: AsyncQdrantClient | str,
        collection: str,
        dimension: int,
        *,
        oversampling: float = 4.0,
        timeout_secs: float = 1.0,
        purge_interval_secs: float = 300.0,
    ) -> "RemoteL2Store":
        """Open (creating if missing) ``collection`` on ``client``: a ready client, or a location
        for qdrant-client's local mode (``":memory:"``) used by tests."""
        if isinstance(client, str):
            client = AsyncQdrantClient(location=client)
        store = cls(
            client,
            collection,
            dimension=dimension,
            oversampling=oversampling,
            timeout_secs=timeout_secs,
            purge_interval_secs=purge_interval_secs,
        )
        try:
            await store._ensure_collection()
            await store.purge_expired()
        except BaseException:
            await client.close()
            raise
        return store

    async def _ensure_collection(self) -> None:
        name = self._collection
        if await self._guard(self._client.collection_exists(name), bounded=False):
            info = await self._guard(self._client.get_collection(name), bounded=False)
            vectors = info.config.params.vectors
            size = vectors.size if isinstance(vectors, qm.VectorParams) else None
            if size != self.dimension:
                raise TierUnavailable(
                    schema.COMPONENT,
                    "dimension",
                    f"collection {name!r} holds vectors of size {size}, the embedder gives "
                    f"{self.dimension}; use another REFLEX_QDRANT_COLLECTION",
                )
        else:
            try:
                await self._client.create_collection(
                    name,
                    vectors_config=qm.VectorParams(size=self.dimension, distance=qm.Distance.COSINE),
                    # 1 bit per dimension in RAM for the first pass; the full vectors rescore the
                    # oversampled shortlist, so the similarities returned are exact cosines.
                    quantization_config=qm.BinaryQuantization(
                        binary=qm.BinaryQuantizationConfig(always_ram=True)
                    ),
                )
            except UnexpectedResponse as exc:
                # Another gateway replica created it between our check and our create: fine.
                if exc.status_code != 409:
                    raise TierUnavailable(schema.COMPONENT, _reason(exc), str(exc)) from exc
            except Exception as exc:
                raise TierUnavailable(schema.COMPONENT, _reason(exc), str(exc)) from exc
        # Idempotent on the server, so every replica can (re)declare them at start-up.
        for field in schema.KEYWORD_FIELDS:
            await self._guard(
                self._client.create_payload_index(
                    name,
                    field,
                    qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=field == schema.TENANT),
                    wait=True,
                ),
                bounded=False,
            )
        await self._guard(
            self._client.create_payload_index(name, schema.EXPIRES_AT, qm.PayloadSchemaType.FLOAT, wait=True),
            bounded=False,
        )

    # ------------------------------------------------------------------ L2Store
    async def search(
        self, scope: L2Scope, vector: Sequence[float], *, top_k: int, min_similarity: float
    ) -> list[L2Candidate]:
        query = schema.check_vector(vector, self.dimension)
        response = await self._guard(
            self._client.query_points(
                self._collection,
                query=query,
                query_filter=_filter(scope, time.time()),
                limit=top_k,
                score_threshold=min_similarity,
                search_params=self._search_params,
                with_payload=schema.RETURNED_FIELDS,
                with_vectors=False,
            )
        )
        return [schema.candidate(p.payload, p.score) for p in response.points]

    async def has_entries(self, scope: L2Scope) -> bool:
        # a scroll of one point id, filtered like a search (the scope's fields are indexed)
        records, _ = await self._guard(
            self._client.scroll(self._collection, scroll_filter=_filter(scope, time.time()), limit=1,
                                with_payload=False, with_vectors=False)
        )
        return bool(records)

    async def upsert(self, point: L2Point) -> None:
        point_id, vector, payload = schema.prepare(point, self.dimension)
        stored = qm.PointStruct(id=str(point_id), vector=vector, payload=payload)
        # wait=True: the server answers once the point is applied, so the next search sees it.
        await self._guard(self._client.upsert(self._collection, points=[stored], wait=True))
        self._maybe_purge()

    async def check(self) -> None:
        await self._guard(self._client.get_collection(self._collection))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._purges:
            task.cancel()
        await asyncio.gather(*self._purges, return_exceptions=True)
        await self._client.close()

    # ------------------------------------------------------------------ maintenance (public for tests/ops)
    async def purge_expired(self) -> None:
        """Delete every expired point now (searches skip them anyway; this frees the space)."""
        expired = qm.Filter(must=[qm.FieldCondition(key=schema.EXPIRES_AT, range=qm.Range(lte=time.time()))])
        await self._guard(
            self._client.delete(self._collection, points_selector=qm.FilterSelector(filter=expired), wait=True)
        )

    async def points_count(self) -> int:
        """Points stored, expired ones not yet purged included (for metrics and tests)."""
        result = await self._guard(self._client.count(self._collection, exact=True))
        return int(result.count)

    # ------------------------------------------------------------------ administration and snapshots
    async def admin_store(self) -> "schema.L2Admin":
        return self

    # Paged like the embedded store's (see edge.py); calls wait without the request deadline, since
    # they are administrative and each page is small.
    async def scan(
        self, selection: Selection | None = None, *, page: int = 1000
    ) -> AsyncIterator[list[schema.StoredPoint]]:
        """Every point of ``selection``'s keyword scope, a page at a time, without vectors or entries."""
        async for records in self._pages(_keyword_filter(selection), page, schema.SCAN_FIELDS, False):
            yield [schema.stored_point(r.id, r.payload or {}, self.dimension) for r in records]

    async def retrieve(self, entry_ids: Sequence[str]) -> list[schema.StoredPoint]:
        ids = [str(schema.point_id(e)) for e in entry_ids]
        records = await self._guard(
            self._client.retrieve(self._collection, ids=ids, with_payload=True, with_vectors=False), bounded=False
        )
        return [schema.stored_point(r.id, r.payload or {}, self.dimension) for r in records]

    async def delete_points(self, point_ids: Sequence[str]) -> None:
        for start in range(0, len(point_ids), 1000):
            chunk: list[qm.ExtendedPointId] = list(point_ids[start:start + 1000])
            await self._guard(
                self._client.delete(self._collection, points_selector=qm.PointIdsList(points=chunk), wait=True),
                bounded=False,
            )

    async def export_points(self, *, page: int = 512) -> AsyncIterator[list[schema.RawPoint]]:
        live = qm.Filter(must=[qm.FieldCondition(key=schema.EXPIRES_AT, range=qm.Range(gt=time.time()))])
        async for records in self._pages(live, page, True, True):
            yield [schema.RawPoint(str(r.id), list(r.vector), dict(r.payload or {})) for r in records]  # type: ignore[arg-type]

    async def import_points(self, points: Sequence[schema.RawPoint]) -> None:
        stored = [
            qm.PointStruct(id=p.point_id, vector=schema.check_vector(p.vector, self.dimension), payload=p.payload)
            for p in points
        ]
        await self._guard(self._client.upsert(self._collection, points=stored, wait=True), bounded=False)

    async def clear(self) -> None:
        await self._guard(
            self._client.delete(self._collection, points_selector=qm.FilterSelector(filter=qm.Filter()), wait=True),
            bounded=False,
        )

    async def _pages(
        self, flt: qm.Filter | None, page: int, payload: object, vectors: bool
    ) -> AsyncIterator[list[qm.Record]]:
        offset = None
        while True:
            records, offset = await self._guard(
                self._client.scroll(
                    self._collection, scroll_filter=flt, limit=page, offset=offset,
                    with_payload=payload, with_vectors=vectors,  # type: ignore[arg-type]
                ),
                bounded=False,
            )
            if records:
                yield records
            if offset is None:
                return

    # ------------------------------------------------------------------ internals
    async def _guard(self, call: Awaitable[T], *, bounded: bool = True) -> T:
        """Await a client call within the store's deadline, turning any failure into TierUnavailable.

        ``bounded=False`` waits without our deadline (start-up calls; the client's own timeout holds).
        """
        if self._closed:
            if asyncio.iscoroutine(call):
                call.close()  # never awaited: close it so Python does not warn
            raise TierUnavailable(schema.COMPONENT, "closed", "the L2 store was closed")
        limit = self._timeout_secs if bounded else None
        try:
            return await asyncio.wait_for(call, limit)
        except TierUnavailable:
            raise
        except Exception as exc:  # the client raises many types (httpx, grpc, its own); classify
            raise TierUnavailable(schema.COMPONENT, _reason(exc), str(exc)) from exc

    def _maybe_purge(self) -> None:
        """Start a background purge at most every purge_interval_secs, triggered by writes."""
        now = time.monotonic()
        if now - self._last_purge < self._purge_interval_secs:
            return
        self._last_purge = now
        task = asyncio.get_running_loop().create_task(self._purge_logged())
        self._purges.add(task)  # a strong reference, or the loop may drop the task mid-flight
        task.add_done_callback(self._purges.discard)

    async def _purge_logged(self) -> None:
        try:
            await self.purge_expired()
        except TierUnavailable as exc:
            log.warning("L2 purge of expired points failed: %s", exc)
