"""The verified cascade: L1 exact -> L2 vector search -> L3 verifier, and the write-back.

Correctness rule: an L2 candidate is served only when the verifier scored it at or above
the verifier threshold (REFLEX_RERANKER_THRESHOLD) in this very lookup, by the cache-mode
rule of reflex/decision_rule.py (the best score, and with REFLEX_RERANKER_MARGIN > 0 a
runner-up within the margin refuses). The verifier gets each candidate's L2 cosine with it,
so that its decision model's calibrated probability is what the threshold reads. Every tier failure degrades to a plain miss (the
request goes upstream); it is counted, logged once per outage, and reported by /ready.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from reflex import decision_rule
from reflex.entry import CachedEntry
from reflex.settings import GatewaySettings
from reflex.tiers import (
    Embedder,
    L2Candidate,
    L2Point,
    L2Scope,
    L2Store,
    TierUnavailable,
    Verifier,
)
from services.gateway.keys import RequestKeys
from services.gateway.l1 import L1Cache, L1Item, L1Tags
from services.gateway.metrics import GatewayMetrics
from services.gateway.repeats import ParseOnce
from services.gateway.selection import Selection

log = logging.getLogger("reflex.gateway.cascade")

# Consecutive failures of a semantic tier that open its circuit breaker (see ComponentHealth).
BREAKER_FAILURES = 2
# Entries at least this large are decoded and presented on a worker thread, not the event loop.
OFFLOAD_BYTES = 256 * 1024

T = TypeVar("T")



class CacheStatus(StrEnum):
    """What the cache did for a request: the X-Reflex-Status header and a metric label."""

    HIT_L1 = "hit-l1-exact"
    HIT_L3 = "hit-l3-verified"
    MISS = "miss"
    BYPASS = "bypass"  # the request asked not to be looked up (Cache-Control / X-Reflex-Cache)


@dataclass(frozen=True, slots=True)
class SemanticTiers:
    """L2 and L3 come as a set: a vector search without a verifier could only serve
    unverified answers, and a verifier without candidates has nothing to score."""

    embedder: Embedder
    verifier: Verifier
    l2: L2Store


@dataclass(slots=True)
class Lookup:
    # Not frozen: lookup() sets lookup_ms on the result (dataclasses.replace, or a frozen
    # dataclass's __init__, costs microseconds that every L1 hit pays).
    status: CacheStatus  # HIT_L1, HIT_L3, MISS, or BYPASS when no lookup was made
    entry: CachedEntry | None = None
    similarity: float | None = None
    verifier_score: float | None = None
    # the embedding of the question, reused when the answer is written (never embed twice)
    vector: list[float] | None = None
    # ... or that embedding still on its way, when the lookup went upstream without waiting
    # for it (an empty scope, see Cascade._semantic); the write-back awaits it
    embedding: asyncio.Future[list[list[float]] | None] | None = None
    lookup_ms: float = 0.0
    entry_bytes: int = 0  # the serialized entry's size: large hits are prepared off the event loop


class ComponentHealth:
    """Which components failed last time they were used, and a circuit breaker over them.

    Logs each outage and recovery once. A component whose last BREAKER_FAILURES calls all
    failed is skipped for ``retry_secs`` (its calls become plain misses at once, instead of each
    paying the full deadline); then one call goes through as a probe, and if it fails the pause
    starts again. A success, the probe's or a readiness check's, closes the breaker. One failure
    alone does not open it, and neither do the calls that were in flight when it happened: with
    several replicas behind one target, a replica killed with calls on it fails only those calls
    (one event, however many they are) while round_robin routes the next ones to the others.
    """

    def __init__(self, retry_secs: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._failing: dict[str, str] = {}
        self._in_a_row: dict[str, int] = {}
        self._last_failure: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        self._retry_secs = retry_secs
        self._clock = clock

    def now(self) -> float:
        return self._clock()

    def failed(self, component: str, reason: str, detail: str, started_at: float | None = None) -> None:
        """A call to ``component`` failed; ``started_at`` (``now()`` when it began) tells the
        calls that were already in flight at the previous failure: those died of the same
        event (a replica killed with several calls on it) and do not add to the streak."""
        if component not in self._failing:
            log.warning("%s unavailable (%s: %s); falling back to misses until it returns", component, reason, detail)
        self._failing[component] = reason
        now = self._clock()
        last = self._last_failure.get(component)
        self._last_failure[component] = now
        if started_at is None or last is None or started_at >= last:
            self._in_a_row[component] = self._in_a_row.get(component, 0) + 1
        if self._retry_secs > 0 and self._in_a_row.get(component, 0) >= BREAKER_FAILURES:
            self._retry_at[component] = now + self._retry_secs

    def ok(self, component: str) -> None:
        self._in_a_row.pop(component, None)
        self._retry_at.pop(component, None)
        if self._failing.pop(component, None) is not None:
            log.info("%s is back", component)

    def skipping(self, component: str) -> bool:
        """True while ``component``'s breaker is open; False lets this call through (a probe
        when the pause is over: the next calls wait for its outcome, one more pause long)."""
        retry_at = self._retry_at.get(component)
        if retry_at is None:
            return False
        now = self._clock()
        if now < retry_at:
            return True
        self._retry_at[component] = now + self._retry_secs
        return False

    def failing(self) -> dict[str, str]:
        return dict(self._failing)


class Cascade:
    def __init__(
        self,
        settings: GatewaySettings,
        l1: L1Cache,
        tiers: SemanticTiers | None,
        metrics: GatewayMetrics,
        health: ComponentHealth | None = None,
    ) -> None:
        self.settings = settings
        self.l1 = l1
        self.tiers = tiers
        self.metrics = metrics
        self.health = health or ComponentHealth(settings.cache.tier_retry_secs)
        # the entries of exact hits, decoded once per distinct value (repeats.py)
        self._decoded: ParseOnce[CachedEntry] = ParseOnce()
        self._embed_timeout = settings.models.embedder_timeout_ms / 1000
        self._verify_timeout = settings.models.verifier_timeout_ms / 1000
        self._l2_timeout = settings.l2.timeout_ms / 1000
        # the clients enforce their own deadlines; ours is the backstop, a little later so
        # that a client's richer error (and its reason label) normally wins
        self._backstop = 0.05
        self._min_useful_score = settings.verifier.threshold
        # lookups' embeddings still on their way after the lookup returned (see _semantic)
        self._pending: set[asyncio.Task[Any]] = set()
        # the two series every lookup updates, bound once
        self._l1_seconds = metrics.lookup_seconds.labels("l1")
        self._total_seconds = metrics.lookup_seconds.labels("total")

    # ------------------------------------------------------------------ plumbing
    def _in_background(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """``work`` as a task this cascade holds until it is done (the event loop keeps only a
        weak reference to a task: one nobody awaits could be collected while it runs)."""
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _call(
        self, component: str, stage: str | None, call: Callable[[], Awaitable[T]], deadline: float | None = None
    ) -> T | None:
        """Run one tier call; on failure count it, mark the component, and return None.

        ``deadline`` is enforced here too, not only by the client's own timeout: a tier that
        ignores its timeout must still not hold a request past it.
        """
        if component != self.l1.name and self.health.skipping(component):
            # L1 has its own backoff (REFLEX_REDIS_RETRY_SECS); the semantic tiers this breaker
            self.metrics.tier_failures.labels(component, "circuit_open").inc()
            return None
        started, began = time.perf_counter(), self.health.now()
        try:
            if deadline is None:
                # L1: its clients bound their own calls; no Timeout object on the hit path
                result = await call()
            else:
                try:
                    async with asyncio.timeout(deadline):  # no extra task, unlike wait_for
                        result = await call()
                except TimeoutError:
                    raise TierUnavailable(component, "timeout", f"no answer within {deadline:.3f} s") from None
        except Exception as exc:  # noqa: BLE001
            self._failed(component, exc, began)
            return None
        finally:
            if stage is not None:
                self.metrics.lookup_seconds.labels(stage).observe(time.perf_counter() - started)
        self.health.ok(component)
        return result

    async def _l1_get(self, key: str) -> bytes | None:
        """``_call`` for the one call every exact hit makes, without its closure and deadline
        plumbing (L1's clients bound their own calls)."""
        started, began = time.perf_counter(), self.health.now()
        try:
            raw = await self.l1.get(key)
        except Exception as exc:  # noqa: BLE001
            self._failed(self.l1.name, exc, began)
            return None
        finally:
            self._l1_seconds.observe(time.perf_counter() - started)
        self.health.ok(self.l1.name)
        return raw

    def _failed(self, component: str, exc: Exception, began: float) -> None:
        if isinstance(exc, TierUnavailable):
            self.metrics.tier_failures.labels(exc.component, exc.reason).inc()
            self.health.failed(exc.component, exc.reason, str(exc), started_at=began)
            return
        # A bug or an unexpected client error in a tier must not fail the request: the
        # upstream can still answer it. Logged with its traceback, counted, then a miss.
        log.error("%s failed unexpectedly", component, exc_info=exc)
        self.metrics.tier_failures.labels(component, "error").inc()
        self.health.failed(component, "error", type(exc).__name__, started_at=began)

    # ------------------------------------------------------------------ lookup
    async def lookup(self, keys: RequestKeys) -> Lookup:
        started = time.perf_counter()
        result = await self._lookup(keys)
        elapsed = time.perf_counter() - started
        self._total_seconds.observe(elapsed)
        result.lookup_ms = elapsed * 1000
        return result

    async def _lookup(self, keys: RequestKeys) -> Lookup:
        raw = await self._l1_get(keys.l1_key)
        if raw is not None:
            entry = await self._decode_hit(raw, "l1")
            if entry is not None:
                return Lookup(CacheStatus.HIT_L1, entry=entry, entry_bytes=len(raw))
        scope = keys.scope
        if self.tiers is None or keys.question is None or scope is None:
            return Lookup(CacheStatus.MISS)
        return await self._semantic(keys.question, scope, self.tiers)

    async def _semantic(self, question: str, scope: L2Scope, tiers: SemanticTiers) -> Lookup:
        # The question's embedding and "does this scope hold anything?" go out together. Most
        # scopes a lookup meets are empty: the scope includes the whole conversation before the
        # question, so every later turn of a chat is a context of its own. There no entry can
        # be served, and the request goes upstream at once instead of after the embedding (the
        # embedder's forward pass was most of a no-candidate miss's cost); the embedding, still
        # on its way, is kept for writing the answer.
        embedding = self._in_background(self._call(
            "embedder",
            "embed",
            lambda: tiers.embedder.embed([question], timeout=self._embed_timeout),
            self._embed_timeout + self._backstop,
        ))
        populated = await self._call(
            "l2", "scope", lambda: tiers.l2.has_entries(scope), self._l2_timeout + self._backstop
        )
        if populated is False:  # None: L2 failed, and the search below finds out the same way
            self.metrics.semantic_lookups.labels("empty_scope").inc()
            return Lookup(CacheStatus.MISS, embedding=embedding)
        vectors = await embedding
        if not vectors:
            return Lookup(CacheStatus.MISS)
        vector = list(vectors[0])
        candidates = await self._call(
            "l2",
            "l2",
            lambda: tiers.l2.search(
                scope, vector, top_k=self.settings.l2.top_k, min_similarity=self.settings.l2.min_similarity
            ),
            self._l2_timeout + self._backstop,
        )
        if not candidates:
            self.metrics.semantic_lookups.labels("no_candidate").inc()
            return Lookup(CacheStatus.MISS, vector=vector)
        self.metrics.semantic_lookups.labels("verified").inc()
        # Only the nearest few are verified (REFLEX_RERANKER_CANDIDATES; decision_rule.shortlist).
        candidates = decision_rule.shortlist(candidates[: self.settings.l2.top_k], self.settings.verifier.candidates)
        scores = await self._call(
            "verifier",
            "verify",
            # The cosines L2 found them by go along: the verifier's decision model uses them.
            # A score below the threshold changes no decision (decision_rule: the margin only
            # weighs runners-up that reach it), so the verifier may skip the model for
            # candidates that cannot reach it.
            lambda: tiers.verifier.score(question, [c.question for c in candidates],
                                         [c.similarity for c in candidates], timeout=self._verify_timeout,
                                         min_score=self._min_useful_score),
            self._verify_timeout + self._backstop,
        )
        if scores is None:
            return Lookup(CacheStatus.MISS, vector=vector)
        best = self._best_verified(candidates, scores)
        if best is None:
            return Lookup(CacheStatus.MISS, vector=vector)
        candidate, score = best
        entry = await self._decode_hit(candidate.entry, "l2")
        if entry is None:
            return Lookup(CacheStatus.MISS, vector=vector)
        return Lookup(CacheStatus.HIT_L3, entry=entry, similarity=candidate.similarity, verifier_score=score,
                      vector=vector, entry_bytes=len(candidate.entry))

    def _best_verified(self, candidates: list[L2Candidate], scores: list[float]) -> tuple[L2Candidate, float] | None:
        if len(scores) != len(candidates) or not all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores):
            # A malformed answer is not a yes: without one score per candidate we cannot
            # know which candidate the verifier approved.
            self.metrics.tier_failures.labels("verifier", "bad_response").inc()
            log.error("verifier returned %d scores for %d candidates; treating as a miss", len(scores), len(candidates))
            return None
        self.metrics.verifier_scores.observe(float(max(scores)))
        # The one cache-mode rule (reflex/decision_rule.py), the same `reflex eval` measures.
        chosen = decision_rule.choose([float(s) for s in scores], self.settings.verifier.threshold,
                                      self.settings.verifier.margin)
        if chosen is None:
            return None
        return candidates[chosen], float(scores[chosen])

    async def _decode_hit(self, raw: bytes, tier: str) -> CachedEntry | None:
        if len(raw) < OFFLOAD_BYTES:
            return self._decode(raw, tier)
        # Parsing a large entry holds the loop about 30 ms per MiB: on a worker thread other
        # requests (and health probes) get their turns at every GIL switch interval.
        return await asyncio.to_thread(self._decode, raw, tier)

    def _decode(self, raw: bytes, tier: str) -> CachedEntry | None:
        try:
            # keyed by the bytes themselves: the in-process L1 hands out the same object each
            # time (its hash is computed once), a Redis value is hashed and compared in C
            return self._decoded.get(raw, len(raw), lambda: CachedEntry.from_bytes(raw))
        except (ValueError, KeyError, TypeError) as exc:
            # e.g. an entry written by an incompatible version sharing the same Redis
            log.warning("unreadable %s entry skipped: %s", tier, exc)
            self.metrics.tier_failures.labels(tier, "bad_entry").inc()
            return None

    # ------------------------------------------------------------------ write-back
    async def store_answer(
        self, keys: RequestKeys, completion: dict[str, Any], found: Lookup | None, *, semantic: bool = True
    ) -> None:
        """Write a fresh upstream answer to L1 and (when eligible) L2 together. Runs after the
        response was sent; a failure is counted and logged, never raised to anyone.
        ``found`` is the request's lookup, whose embedding of the question (made, or on its
        way) is reused; ``semantic`` False keeps the answer out of L2 (an answer that calls
        tools: exact repeats only). L1 does not wait for L2: its write lands at once, and L2's
        when the embedding is in (a lookup in an empty scope did not wait for it);
        ``reflex_gateway_pending_cache_writes`` shows what is still on its way."""
        data = CachedEntry(entry_id=keys.l1_key, completion=completion, question=keys.question).to_bytes()
        writes = [self._write_l1(keys, data)]
        scope = keys.scope
        if semantic and self.tiers is not None and keys.question is not None and scope is not None:
            writes.append(self._store_l2(keys.l1_key, keys.question, scope, data, found, self.tiers))
        await asyncio.gather(*writes)

    async def promote(self, keys: RequestKeys, entry: CachedEntry) -> None:
        """Copy an entry that L3 just served into L1 under this request's own key, so an exact
        repeat of this wording skips the models next time. It keeps the question it was cached
        for, so a later exact hit still shows what the answer was matched to. L2 already holds it."""
        data = CachedEntry(entry_id=keys.l1_key, completion=entry.completion, question=entry.question).to_bytes()
        await self._write_l1(keys, data)

    async def _write_l1(self, keys: RequestKeys, data: bytes) -> None:
        # the tags feed L1's invalidation index (tenant, model, context), see l1.py
        tags = L1Tags(keys.tenant, keys.model, keys.context_hash)
        await self._write("l1", self.l1.name, None, lambda: self.l1.set(keys.l1_key, data, tags=tags))

    async def _store_l2(
        self, entry_id: str, question: str, scope: L2Scope, data: bytes, found: Lookup | None,
        tiers: SemanticTiers,
    ) -> None:
        vector = found.vector if found is not None else None
        if vector is None and found is not None and found.embedding is not None:
            vectors = await found.embedding  # never raises: _call turned any failure into None
            vector = list(vectors[0]) if vectors else None
        if vector is None:
            # The lookup did not embed (refresh, or the embedder was down): embedding here is
            # off the request's critical path.
            vectors = await self._call(
                "embedder",
                None,
                lambda: tiers.embedder.embed([question], timeout=self._embed_timeout),
                self._embed_timeout + self._backstop,
            )
            if not vectors:
                self.metrics.cache_writes.labels("l2", "skipped").inc()
                return
            vector = list(vectors[0])
        point = L2Point(entry_id=entry_id, scope=scope, question=question, vector=vector, entry=data,
                        ttl_secs=self.settings.cache.cache_ttl_secs)
        await self._write("l2", "l2", self._l2_timeout + self._backstop, lambda: tiers.l2.upsert(point))

    async def _write(
        self, tier: str, component: str, deadline: float | None, call: Callable[[], Awaitable[None]]
    ) -> None:
        started = time.perf_counter()
        ok = await self._call(component, None, _returning_true(call), deadline)
        self.metrics.cache_writes.labels(tier, "ok" if ok else "failed").inc()
        log.debug("%s write %s in %.1f ms", tier, "ok" if ok else "failed", (time.perf_counter() - started) * 1000)

    # ------------------------------------------------------------------ administration
    # Used by the admin API and tenant self-service (admin.py). Each removes from L1 and L2 together;
    # none is on a request's path, so they scan (a tenant's entries at most, when one is named).
    async def l2_admin(self) -> Any | None:
        """The L2 store's administration interface (``l2.schema.L2Admin``), or None without L2."""
        if self.tiers is None:
            return None
        opener = getattr(self.tiers.l2, "admin_store", None)
        return await opener() if opener is not None else None

    async def delete_entry(self, entry_id: str, *, tenant: str | None = None) -> dict[str, int] | None:
        """Remove one entry, and every copy of the same answer, from L1 and L2.

        An L3 hit is copied into L1 under the new request's own key (``promote``), and that copy's
        id is what the caller saw; deleting only the named id would let the L2 original serve the
        bad answer again. So the copies of this tenant with the same question and the same cached
        completion go too. ``tenant`` restricts it to that tenant's entries (self-service): another
        tenant's id is reported as not found. None when no such entry exists.
        """
        l2 = await self.l2_admin()
        origin_tenant, question, completion = None, None, None
        points = await l2.retrieve([entry_id]) if l2 is not None else []
        if points and points[0].entry is not None:
            origin_tenant = points[0].tenant
            entry = self._decode(points[0].entry, "l2")
            if entry is not None:
                question, completion = entry.question, entry.completion
        if origin_tenant is None:
            # L1 only (or not at all): find it in the index (one tenant's when named, else all)
            found = [i for i in await self.l1.select(Selection(tenant=tenant)) if i.key == entry_id]
            if not found:
                return None
            origin_tenant = found[0].tags.tenant
            entry = self._decode(found[0].value, "l1")
            if entry is not None:
                question, completion = entry.question, entry.completion
        if tenant is not None and origin_tenant != tenant:
            return None
        l1_copies: list[L1Item] = []
        l2_victims = [p.point_id for p in points]
        if question is not None:
            for item in await self.l1.select(Selection(tenant=origin_tenant)):
                if item.key == entry_id:
                    l1_copies.append(item)  # by item too, so Redis drops its index member
                    continue
                copy = self._decode(item.value, "l1")
                if copy is not None and copy.question == question and copy.completion == completion:
                    l1_copies.append(item)
            if l2 is not None:
                same_question = [p.entry_id async for page in l2.scan(Selection(tenant=origin_tenant))
                                 for p in page if p.question == question and p.entry_id != entry_id]
                for p in await l2.retrieve(same_question) if same_question else []:
                    copy = self._decode(p.entry, "l2") if p.entry is not None else None
                    if copy is not None and copy.completion == completion:
                        l2_victims.append(p.point_id)
        removed_l1 = await self.l1.delete([entry_id]) + await self.l1.delete(l1_copies)
        if l2 is not None and l2_victims:
            await l2.delete_points(l2_victims)
        self.metrics.invalidated.labels("l1", "delete").inc(removed_l1)
        self.metrics.invalidated.labels("l2", "delete").inc(len(l2_victims))
        return {"l1": removed_l1, "l2": len(l2_victims)}

    async def invalidate(self, selection: Selection, *, reason: str = "invalidate") -> dict[str, int]:
        """Remove every entry ``selection`` names from L1 and L2; how many went from each."""
        now = time.time()
        removed_l2 = 0
        l2 = await self.l2_admin()
        if l2 is not None:
            victims = [p.point_id async for page in l2.scan(selection) for p in page if p.matches(selection, now)]
            if victims:
                await l2.delete_points(victims)
            removed_l2 = len(victims)
        removed_l1 = await self.l1.delete(await self.l1.select(selection))
        self.metrics.invalidated.labels("l1", reason).inc(removed_l1)
        self.metrics.invalidated.labels("l2", reason).inc(removed_l2)
        return {"l1": removed_l1, "l2": removed_l2}

    async def stored_usage(self, tenant: str | None = None) -> dict[str, dict[str, int]]:
        """Per tenant: live entries and bytes in each tier (one tenant's when named, else all)."""
        now = time.time()
        usage: dict[str, dict[str, int]] = {}

        def row(t: str) -> dict[str, int]:
            return usage.setdefault(t, {"l1_entries": 0, "l1_bytes": 0, "l2_entries": 0, "l2_bytes": 0})

        for item in await self.l1.select(Selection(tenant=tenant)):
            r = row(item.tags.tenant)
            r["l1_entries"] += 1
            r["l1_bytes"] += len(item.value)
        l2 = await self.l2_admin()
        if l2 is not None:
            async for page in l2.scan(Selection(tenant=tenant)):
                for p in page:
                    if p.expires_at > now:
                        r = row(p.tenant)
                        r["l2_entries"] += 1
                        r["l2_bytes"] += p.size_bytes
        return usage

    # ------------------------------------------------------------------ readiness
    async def readiness(self, timeout: float) -> dict[str, str]:
        """Component -> "ok" or the reason it failed a live check now."""
        checks: dict[str, Callable[[], Awaitable[None]]] = {self.l1.name: self.l1.check}
        if self.tiers is not None:
            checks.update(embedder=self.tiers.embedder.check, verifier=self.tiers.verifier.check, l2=self.tiers.l2.check)

        async def run(name: str, check: Callable[[], Awaitable[None]]) -> str:
            try:
                await asyncio.wait_for(check(), timeout)
            except TierUnavailable as exc:
                return exc.reason
            except TimeoutError:
                return "timeout"
            except Exception as exc:  # noqa: BLE001 - a readiness probe reports, it never raises
                log.warning("readiness check of %s raised %s", name, type(exc).__name__)
                return "error"
            self.health.ok(name)
            return "ok"

        results = await asyncio.gather(*(run(n, c) for n, c in checks.items()))
        return dict(zip(checks, results, strict=True))


def _returning_true(call: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        await call()
        return True

    return wrapped

