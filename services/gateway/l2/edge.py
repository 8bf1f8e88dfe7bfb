"""The embedded L2 store: a Qdrant Edge shard on local disk (the default, ``reflex serve``).

Qdrant Edge is Qdrant's storage and search engine running inside this process, with a WAL, so
entries survive restarts (and crashes: the WAL is replayed on load). Its calls are blocking and
hold Python's GIL while they run, so:

- every call runs on ONE dedicated worker thread per store. One thread keeps writes ordered and
  makes a write visible to every search submitted after it, without locks of our own, and the
  event loop never waits on the engine except for the sub-millisecond GIL-held part of a call;
- the engine has no background optimizer: new points sit in an appendable segment, scanned
  (binary-quantized, then rescored) within the filtered scope until ``optimize()`` builds the
  HNSW graph. We build at open, before serving, and in the hot path only if
  ``l2_edge_optimize_points`` asks for it, because a build stalls the whole process (it holds
  the GIL) for seconds: 4-20 s for 50k 384-d points on 2 cores (scripts/bench_l2.py).

One process may open a shard at a time (the engine locks its WAL): under ``reflex serve`` that is
the gateway; several gateway replicas need the remote backend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import qdrant_edge as qe

from reflex.tiers import L2Candidate, L2Point, L2Scope, TierUnavailable
from services.gateway.l2 import schema
from services.gateway.selection import Selection

log = logging.getLogger("reflex.gateway.l2.edge")

T = TypeVar("T")


def _edge_config(dimension: int, *, indexing_threshold_kb: int | None) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine),
        # 1 bit per dimension kept in RAM (32x smaller than float32) for the first pass; the full
        # vectors stay on disk for rescoring, so the scores we return are exact cosines.
        quantization_config=qe.BinaryQuantizationConfig(always_ram=True),
        # Qdrant's defaults; full_scan_threshold (KB of vectors) lets small filtered subsets, the
        # usual case once tenant + model + context have narrowed it, skip the graph entirely.
        hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=indexing_threshold_kb)
        if indexing_threshold_kb is not None
        else None,
    )


def _filter(scope: L2Scope, now: float) -> qe.Filter:
    return qe.Filter(
        must=[
            *(qe.FieldCondition(key, match=qe.MatchValue(value)) for key, value in schema.scope_conditions(scope)),
            qe.FieldCondition(schema.EXPIRES_AT, range=qe.RangeFloat(gt=now)),
        ]
    )


def _keyword_filter(selection: Selection | None) -> qe.Filter | None:
    conditions = list(selection.keywords().items()) if selection is not None else []
    if not conditions:
        return None
    return qe.Filter(must=[qe.FieldCondition(key, match=qe.MatchValue(value)) for key, value in conditions])


def _expired(now: float) -> qe.Filter:
    return qe.Filter(must=[qe.FieldCondition(schema.EXPIRES_AT, range=qe.RangeFloat(lte=now))])


class EdgeL2Store:
    """L2Store on a Qdrant Edge shard. Build it with ``await EdgeL2Store.open(...)``."""

    def __init__(
        self,
        shard: qe.EdgeShard,
        worker: ThreadPoolExecutor,
        *,
        dimension: int,
        oversampling: float,
        timeout_secs: float,
        purge_interval_secs: float,
        optimize_every_points: int,
    ) -> None:
        self._shard = shard
        self._worker = worker
        self.dimension = dimension
        self._search_params = qe.SearchParams(
            quantization=qe.QuantizationSearchParams(rescore=True, oversampling=oversampling)
        )
        self._timeout_secs = timeout_secs
        self._purge_interval_secs = purge_interval_secs
        self._optimize_every_points = optimize_every_points
        self._last_purge = time.monotonic()
        self._written_since_optimize = 0
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: Path,
        dimension: int,
        *,
        oversampling: float = 4.0,
        timeout_secs: float = 1.0,
        purge_interval_secs: float = 300.0,
        optimize_every_points: int = 0,
        indexing_threshold_kb: int | None = None,
    ) -> "EdgeL2Store":
        """Open the shard at ``path``, creating it if missing; purge expired points; index.

        ``indexing_threshold_kb`` is the engine's own knob (segments smaller than this many KB of
        vectors are not indexed); None keeps the engine's default. Tests lower it to exercise the
        HNSW + binary-quantization path on a few hundred points.
        """
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reflex-l2-edge")
        loop = asyncio.get_running_loop()
        config = _edge_config(dimension, indexing_threshold_kb=indexing_threshold_kb)
        try:
            shard = await loop.run_in_executor(worker, _open_shard, path, config)
        except BaseException:
            worker.shutdown(wait=False)
            raise
        store = cls(
            shard,
            worker,
            dimension=dimension,
            oversampling=oversampling,
            timeout_secs=timeout_secs,
            purge_interval_secs=purge_interval_secs,
            optimize_every_points=optimize_every_points,
        )
        # At start-up a stall is harmless (nothing is served yet), so catch up on the housekeeping
        # a previous run left: expired points out, then the index built over what remains.
        try:
            await loop.run_in_executor(worker, store._purge_blocking)
            await loop.run_in_executor(worker, store._optimize_blocking)
        except BaseException:
            await store.close()  # release the WAL lock, or no later open could succeed
            raise
        return store

    # ------------------------------------------------------------------ L2Store
    async def search(
        self, scope: L2Scope, vector: Sequence[float], *, top_k: int, min_similarity: float
    ) -> list[L2Candidate]:
        request = qe.QueryRequest(
            limit=top_k,
            query=qe.Query.Nearest(schema.check_vector(vector, self.dimension)),
            filter=_filter(scope, time.time()),
            score_threshold=min_similarity,
            params=self._search_params,
            with_payload=qe.PayloadSelector.Include(schema.RETURNED_FIELDS),
            with_vector=False,
        )
        points = await self._call(self._shard.query, request)
        return [schema.candidate(p.payload, p.score) for p in points]

    async def has_entries(self, scope: L2Scope) -> bool:
        # a scroll of one point id, filtered like a search: stops at the first live point
        request = qe.ScrollRequest(limit=1, filter=_filter(scope, time.time()), with_payload=False, with_vector=False)
        records, _ = await self._call(self._shard.scroll, request)
        return bool(records)

    async def upsert(self, point: L2Point) -> None:
        stored = qe.Point(*schema.prepare(point, self.dimension))
        await self._call(self._shard.update, qe.UpdateOperation.upsert_points([stored]))
        self._written_since_optimize += 1
        self._schedule_housekeeping()

    async def check(self) -> None:
        await self._call(self._shard.info)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Queued housekeeping finishes first (the worker runs in order), then the shard flushes and
        # releases its WAL lock, so the next open (this process or another) finds every write.
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._worker, self._close_blocking)
        finally:
            self._worker.shutdown(wait=True)

    # ------------------------------------------------------------------ maintenance (public for tests/ops)
    async def purge_expired(self) -> None:
        """Delete every expired point now (searches skip them anyway; this frees the space)."""
        await self._call(self._purge_blocking)

    async def optimize(self) -> bool:
        """Build the HNSW index and binary quantization over unindexed points; True if it did work."""
        self._written_since_optimize = 0
        return await self._run(self._optimize_blocking, deadline=None)

    async def points_count(self) -> int:
        """Points stored, expired ones not yet purged included (for metrics and tests)."""
        info = await self._call(self._shard.info)
        return int(info.points_count)

    async def indexed_vectors_count(self) -> int:
        info = await self._call(self._shard.info)
        return int(info.indexed_vectors_count)

    # ------------------------------------------------------------------ administration and snapshots
    async def admin_store(self) -> "schema.L2Admin":
        return self

    # Each page is its own job on the worker, so searches and writes queue between pages: a scan of
    # 50k points never holds the shard for longer than one page (~30 ms with vectors on 2 cores).
    async def scan(self, selection: Selection | None = None, *, page: int = 1000) -> AsyncIterator[list[schema.StoredPoint]]:
        """Every point of ``selection``'s keyword scope, a page at a time, without vectors or entries."""
        flt = _keyword_filter(selection)
        async for records in self._pages(flt, page, qe.PayloadSelector.Include(schema.SCAN_FIELDS), False):
            yield [schema.stored_point(r.id, r.payload or {}, self.dimension) for r in records]

    async def retrieve(self, entry_ids: Sequence[str]) -> list[schema.StoredPoint]:
        """The points of these entries (with their entries), those that exist."""
        ids = [str(schema.point_id(e)) for e in entry_ids]
        records = await self._run(self._shard.retrieve, ids, True, False, deadline=None)
        return [schema.stored_point(r.id, r.payload or {}, self.dimension) for r in records]

    async def delete_points(self, point_ids: Sequence[str]) -> None:
        for start in range(0, len(point_ids), 1000):
            chunk = list(point_ids[start:start + 1000])
            await self._run(self._shard.update, qe.UpdateOperation.delete_points(chunk), deadline=None)

    async def export_points(self, *, page: int = 512) -> AsyncIterator[list[schema.RawPoint]]:
        """Every live point as stored, a page at a time (a snapshot's L2 part)."""
        flt = qe.Filter(must=[qe.FieldCondition(schema.EXPIRES_AT, range=qe.RangeFloat(gt=time.time()))])
        async for records in self._pages(flt, page, True, True):
            yield [schema.RawPoint(str(r.id), list(r.vector), dict(r.payload or {})) for r in records]  # type: ignore[arg-type]

    async def import_points(self, points: Sequence[schema.RawPoint]) -> None:
        stored = [qe.Point(p.point_id, schema.check_vector(p.vector, self.dimension), p.payload) for p in points]
        await self._run(self._shard.update, qe.UpdateOperation.upsert_points(stored), deadline=None)
        self._written_since_optimize += len(stored)

    async def clear(self) -> None:
        """Delete every point (a failed hydrate puts the store back to empty with it)."""
        await self._run(self._shard.update, qe.UpdateOperation.delete_points_by_filter(qe.Filter()), deadline=None)

    async def _pages(self, flt: qe.Filter | None, page: int, payload: object, vector: bool) -> AsyncIterator[list[qe.Record]]:
        offset = None
        while True:
            request = qe.ScrollRequest(offset=offset, limit=page, filter=flt, with_payload=payload, with_vector=vector)
            records, offset = await self._run(self._shard.scroll, request, deadline=None)
            if records:
                yield records
            if offset is None:
                return

    # ------------------------------------------------------------------ internals
    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await self._run(fn, *args, deadline=self._timeout_secs)

    async def _run(self, fn: Callable[..., T], *args: object, deadline: float | None) -> T:
        if self._closed:
            raise TierUnavailable(schema.COMPONENT, "closed", "the L2 store was closed")
        loop = asyncio.get_running_loop()
        try:
            # If the deadline passes, the call still completes on the worker (a write is applied);
            # only the caller stops waiting, and later calls queue behind it in order.
            return await asyncio.wait_for(loop.run_in_executor(self._worker, fn, *args), deadline)
        except TimeoutError as exc:
            raise TierUnavailable(schema.COMPONENT, "timeout", f"no answer in {deadline}s") from exc
        except RuntimeError as exc:
            # The worker refuses new work once close() has shut it down.
            if self._closed:
                raise TierUnavailable(schema.COMPONENT, "closed", "the L2 store was closed") from exc
            raise TierUnavailable(schema.COMPONENT, "error", str(exc)) from exc
        except TierUnavailable:
            raise
        except Exception as exc:  # the engine raises plain Exception for every failure
            raise TierUnavailable(schema.COMPONENT, "error", str(exc)) from exc

    def _schedule_housekeeping(self) -> None:
        """Queue a purge and/or an index build behind the write that triggered it.

        Not awaited: the caller's write is done, and the worker runs jobs in order, so the only
        cost is that searches queued after it wait for it.
        """
        now = time.monotonic()
        if now - self._last_purge >= self._purge_interval_secs:
            self._last_purge = now
            self._submit_background(self._purge_blocking, "purge of expired points")
        if self._optimize_every_points and self._written_since_optimize >= self._optimize_every_points:
            self._written_since_optimize = 0
            self._submit_background(self._optimize_blocking, "index build")

    def _submit_background(self, fn: Callable[[], object], what: str) -> None:
        def report(done: Future[object]) -> None:
            if done.cancelled():
                return
            if (exc := done.exception()) is not None:
                log.warning("L2 %s failed: %s", what, exc)

        self._worker.submit(fn).add_done_callback(report)

    def _purge_blocking(self) -> None:
        self._shard.update(qe.UpdateOperation.delete_points_by_filter(_expired(time.time())))

    def _optimize_blocking(self) -> bool:
        started = time.perf_counter()
        changed = self._shard.optimize()
        if changed:
            log.info("L2 index built in %.2fs", time.perf_counter() - started)
        return changed

    def _close_blocking(self) -> None:
        try:
            self._shard.flush()
        finally:
            self._shard.close()


def stored_dimension(path: Path) -> int | None:
    """The vector dimension of the shard at ``path`` (from the engine's own edge_config.json, the
    file ``_open_shard`` also tests for), or None when there is no shard. For offline tools
    (``reflex snapshot``), which must open a shard without an embedder to ask."""
    import json

    config = path / "edge_config.json"
    if not config.exists():
        return None
    vectors = json.loads(config.read_text()).get("vectors", {})
    params = vectors.get("") if isinstance(vectors, dict) and "" in vectors else vectors
    return int(params["size"]) if isinstance(params, dict) and "size" in params else None


def _open_shard(path: Path, config: qe.EdgeConfig) -> qe.EdgeShard:
    """Load the shard at ``path`` (checking it holds vectors of this dimension) or create it."""
    if (path / "edge_config.json").exists():
        try:
            shard = qe.EdgeShard.load(str(path), config)
        except Exception as exc:  # the engine raises plain Exception; name the likely cause
            raise TierUnavailable(
                schema.COMPONENT,
                "error",
                f"cannot open the L2 shard at {path} ({exc}). Only one process may hold it; if "
                "the embedding model changed, use another REFLEX_QDRANT_COLLECTION or delete the shard",
            ) from exc
    else:
        path.mkdir(parents=True, exist_ok=True)
        shard = qe.EdgeShard.create(str(path), config)
    indexed = shard.info().payload_schema
    for field in schema.KEYWORD_FIELDS:
        if field not in indexed:
            # is_tenant lets the engine lay out and plan by tenant, as the filter always names one.
            params = qe.KeywordIndexParams(is_tenant=field == schema.TENANT)
            shard.update(qe.UpdateOperation.create_field_index(field, params))
    if schema.EXPIRES_AT not in indexed:
        shard.update(qe.UpdateOperation.create_field_index(schema.EXPIRES_AT, qe.PayloadSchemaType.Float))
    return shard
