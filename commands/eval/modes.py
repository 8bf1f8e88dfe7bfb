"""The two ways of measuring: each pair alone (pairwise), or every pair against a full cache.

Both end in one ``Scored`` row per pair for the verifier and one for the cosine baseline
(what a cache without a verifier would serve: the nearest entry, if its cosine reaches the
threshold). The baseline costs nothing extra, since the cosines are computed anyway, and
comparing the two from the same run keeps the comparison fair.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import blake3
import numpy as np
from tqdm import tqdm

from commands.eval.aio import map_bounded, retry_overloaded
from commands.eval.data import Pair
from commands.eval.metrics import L1_HIT, NO_CANDIDATE, Scored
from reflex import decision_rule
from reflex.entry import CachedEntry
from reflex.tiers import L2Candidate, L2Point, L2Scope, L2Store, Verifier

# All entries go in one tenant, model and context, as they would for one busy user: the
# point of cache mode is that every stored question competes for every query.
EVAL_SCOPE = L2Scope(
    tenant=blake3.blake3(b"reflex-eval").hexdigest(),
    model="reflex-eval",
    context_hash=blake3.blake3(b"").hexdigest(),
)


class Mode(str, Enum):
    PAIRWISE = "pairwise"
    CACHE = "cache"


@dataclass(frozen=True, slots=True)
class Knobs:
    """The configured cache behaviour under test, and how hard the harness drives the services."""

    top_k: int
    min_similarity: float  # the L2 cosine floor: below it a candidate never reaches the verifier
    concurrency: int  # Score/search/upsert calls in flight
    timeout: float  # per call; bulk calls queue behind each other, so far above the gateway's
    ttl_secs: int
    progress: bool
    # Cache mode: the rule the gateway serves by (reflex/decision_rule.py) at this threshold
    # (REFLEX_RERANKER_THRESHOLD or --threshold) and margin (REFLEX_RERANKER_MARGIN).
    threshold: float = 0.96
    margin: float = 0.0
    verified: int = 1  # REFLEX_RERANKER_CANDIDATES: how many of the top_k the verifier scores


@dataclass(slots=True)
class Judged:
    verifier: Scored | None  # None with --verifier none
    cosine: Scored
    # Cache mode only: the same rows with an entry counted right when the labels make it a
    # duplicate of b (see DuplicateGroups). Informational; the headline rule stays strict.
    verifier_by_groups: Scored | None = None
    cosine_by_groups: Scored | None = None
    exact_repeats: int = 0  # cache mode: queries whose exact text is stored (L1 exact hits)
    score_calls: int = 0
    candidates_scored: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def cosine(u: np.ndarray, v: np.ndarray) -> float:
    # Normalised here too, as Qdrant's cosine distance does, so a pair's pairwise cosine is
    # the similarity L2 would report for it.
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def _bar(desc: str, total: int, knobs: Knobs, unit: str = "call") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=not knobs.progress, leave=False, dynamic_ncols=True)


# (query, candidates, their cosines to the query): one Score call, cosines sent as the gateway sends them.
ScoreRequest = tuple[str, tuple[str, ...], tuple[float, ...]]


async def _score_all(
    verifier: Verifier, requests: Sequence[ScoreRequest], knobs: Knobs, desc: str
) -> dict[ScoreRequest, list[float]]:
    """One Score call per distinct (query, candidates, cosines), many in flight so the verifier's batcher fills."""
    distinct = list(dict.fromkeys(r for r in requests if r[1]))
    with _bar(desc, len(distinct), knobs) as bar:

        async def one(request: ScoreRequest) -> list[float]:
            query, candidates, cosines = request
            scores = await retry_overloaded(lambda: verifier.score(query, candidates, cosines, timeout=knobs.timeout))
            if len(scores) != len(candidates):
                raise RuntimeError(f"verifier returned {len(scores)} scores for {len(candidates)} candidates")
            return [float(s) for s in scores]

        results = await map_bounded(one, distinct, concurrency=knobs.concurrency, on_done=lambda *_: bar.update())
    return dict(zip(distinct, results, strict=True))


async def run_pairwise(
    pairs: Sequence[Pair], vectors: dict[str, np.ndarray], verifier: Verifier | None, knobs: Knobs
) -> Judged:
    """Each ``b`` against its own ``a``: the cosine floor first, then Score(b, [a], [cosine])."""
    cos = [cosine(vectors[p.a], vectors[p.b]) for p in pairs]
    passes = [c >= knobs.min_similarity for c in cos]
    duplicate = [p.duplicate for p in pairs]
    # Serving a's answer is right exactly when the pair is a duplicate.
    floored = [c if ok else NO_CANDIDATE for c, ok in zip(cos, passes, strict=True)]
    cosine_scored = Scored.build(floored, duplicate, duplicate)
    judged = Judged(verifier=None, cosine=cosine_scored)
    if verifier is None:
        return judged
    started = time.perf_counter()
    requests = [(p.b, (p.a,), (c,)) for p, c, ok in zip(pairs, cos, passes, strict=True) if ok]
    scores = await _score_all(verifier, requests, knobs, "score")
    judged.timings["score"] = time.perf_counter() - started
    judged.score_calls = len(scores)
    judged.candidates_scored = len(scores)
    verifier_score = [
        scores[(p.b, (p.a,), (c,))][0] if ok else NO_CANDIDATE for p, c, ok in zip(pairs, cos, passes, strict=True)
    ]
    judged.verifier = Scored.build(verifier_score, duplicate, duplicate)
    return judged


def entry_id_for(question: str) -> str:
    # Identical stored questions are one entry, as in a real cache where the second identical
    # request would be an L1 hit rather than a new entry.
    return blake3.blake3(question.encode()).hexdigest()


async def fill_cache(pairs: Sequence[Pair], vectors: dict[str, np.ndarray], store: L2Store, knobs: Knobs) -> int:
    """Store every distinct ``a``; returns how many entries were written."""
    questions = list(dict.fromkeys(p.a for p in pairs))
    with _bar("store", len(questions), knobs, unit="entry") as bar:

        async def upsert(question: str) -> None:
            entry_id = entry_id_for(question)
            entry = CachedEntry(entry_id=entry_id, completion={}, question=question)
            point = L2Point(
                entry_id=entry_id,
                scope=EVAL_SCOPE,
                question=question,
                vector=vectors[question].tolist(),
                entry=entry.to_bytes(),
                ttl_secs=knobs.ttl_secs,
            )
            await retry_overloaded(lambda: store.upsert(point))

        await map_bounded(upsert, questions, concurrency=knobs.concurrency, on_done=lambda *_: bar.update())
    return len(questions)


def served_is_right(pair: Pair, served_question: str) -> bool:
    """Whether the answer cached for ``served_question`` is right for ``pair.b``.

    * the pair's own ``a`` (or a stored question textually identical to it, which is the
      same entry): right exactly when the pair is labelled a duplicate;
    * a stored question textually identical to ``b`` itself: right, whatever the label,
      because it is the very question asked (QQP repeats questions across pairs: 12% of its
      ``b``s are some other pair's ``a``; these are L1 exact hits, see ``run_cache``);
    * any other entry: wrong, even on a duplicate pair. The label says nothing about that
      entry, so we count the worst case: a hit the verifier cannot justify from the labels.
    """
    if served_question == pair.b:
        return True
    if served_question == pair.a:
        return pair.duplicate
    return False


class DuplicateGroups:
    """Questions joined by the file's duplicate labels (union-find over every duplicate pair).

    QQP is built from groups of questions that all ask the same thing, so a query's best
    match in a full cache is often *another* member of its group: wrong by the strict rule
    (not the pair's own a), yet right by the labels, since a~b and a'~b. Reporting that view
    beside the strict one shows how much of the wrong-entry count is this artefact.
    """

    def __init__(self, pairs: Sequence[Pair]) -> None:
        self._parent: dict[str, str] = {}
        for pair in pairs:
            if pair.duplicate:
                self._union(pair.a, pair.b)

    def _find(self, text: str) -> str:
        parent = self._parent.setdefault(text, text)
        while parent != self._parent[parent]:
            self._parent[parent] = self._parent[self._parent[parent]]  # path halving
            parent = self._parent[parent]
        return parent

    def _union(self, a: str, b: str) -> None:
        self._parent[self._find(a)] = self._find(b)

    def same(self, a: str, b: str) -> bool:
        return a == b or self._find(a) == self._find(b)


def served_is_right_by_groups(pair: Pair, served_question: str, groups: DuplicateGroups) -> bool:
    """Like ``served_is_right``, but any entry the labels join to ``b`` is right too."""
    if served_question == pair.a and not pair.duplicate:
        return False  # the label says no for this very pair, whatever transitivity suggests
    return served_is_right(pair, served_question) or groups.same(served_question, pair.b)


async def run_cache(
    pairs: Sequence[Pair],
    vectors: dict[str, np.ndarray],
    store: L2Store,
    verifier: Verifier | None,
    knobs: Knobs,
) -> Judged:
    """Every ``a`` stored first; then every ``b``: top-k search -> one Score call (with the
    candidates' cosines) -> the gateway's rule (reflex/decision_rule.py) picks the entry.

    A ``b`` whose exact text is a stored question is an L1 exact hit, as in the gateway,
    where L1 answers it before L2 is asked: served its own entry, right, at every threshold.
    Sending it to L2 instead would let the verifier prefer some other, near-identical
    entry, a wrong answer no user could ever receive.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    await fill_cache(pairs, vectors, store, knobs)
    timings["store"] = time.perf_counter() - started

    stored = {p.a for p in pairs}
    started = time.perf_counter()
    queries = [q for q in dict.fromkeys(p.b for p in pairs) if q not in stored]
    with _bar("search", len(queries), knobs, unit="query") as bar:

        async def search(query: str) -> list[L2Candidate]:
            return await retry_overloaded(
                lambda: store.search(
                    EVAL_SCOPE, vectors[query].tolist(), top_k=knobs.top_k, min_similarity=knobs.min_similarity
                )
            )

        found = await map_bounded(search, queries, concurrency=knobs.concurrency, on_done=lambda *_: bar.update())
    # The gateway's shortlist: the verifier sees only the nearest REFLEX_RERANKER_CANDIDATES.
    candidates = {q: decision_rule.shortlist(f, knobs.verified) for q, f in zip(queries, found, strict=True)}
    timings["search"] = time.perf_counter() - started

    duplicate = [p.duplicate for p in pairs]
    groups = DuplicateGroups(pairs)

    def scored(choice: Callable[[Pair], tuple[float, str | None]]) -> tuple[Scored, Scored]:
        """Both views of one scorer, from ``choice(pair) -> (score, served question or None)``."""
        chosen = [(L1_HIT, p.b) if p.b in stored else choice(p) for p in pairs]
        score = [c[0] for c in chosen]
        strict = [s is not None and served_is_right(p, s) for p, (_, s) in zip(pairs, chosen, strict=True)]
        by_groups = [
            s is not None and served_is_right_by_groups(p, s, groups) for p, (_, s) in zip(pairs, chosen, strict=True)
        ]
        return Scored.build(score, strict, duplicate), Scored.build(score, by_groups, duplicate)

    def nearest(pair: Pair) -> tuple[float, str | None]:
        # Without a verifier the cache serves the most similar entry.
        cands = candidates[pair.b]
        if not cands:
            return NO_CANDIDATE, None
        best = max(cands, key=lambda c: c.similarity)
        return best.similarity, best.question

    cosine_scored, cosine_by_groups = scored(nearest)
    judged = Judged(
        verifier=None,
        cosine=cosine_scored,
        cosine_by_groups=cosine_by_groups,
        exact_repeats=sum(1 for p in pairs if p.b in stored),
        timings=timings,
    )
    if verifier is None:
        return judged

    started = time.perf_counter()
    requests = {q: (q, tuple(c.question for c in candidates[q]), tuple(c.similarity for c in candidates[q]))
                for q in queries}
    scores = await _score_all(verifier, list(requests.values()), knobs, "score")
    timings["score"] = time.perf_counter() - started
    judged.score_calls = len(scores)
    judged.candidates_scored = sum(len(r[1]) for r in scores)

    def verified(pair: Pair) -> tuple[float, str | None]:
        request = requests[pair.b]
        if not request[1]:
            return NO_CANDIDATE, None
        query_scores = scores[request]
        # The gateway's rule: the best score is served (on a tie the earlier, more similar
        # candidate), unless a runner-up within REFLEX_RERANKER_MARGIN refuses it. With margin 0
        # the choice does not depend on the threshold, so the sweep over thresholds is exact;
        # with a margin, a refusal at the run's threshold counts as a miss at every threshold.
        best = decision_rule.choose(query_scores, knobs.threshold, knobs.margin)
        if best is None:
            best = int(np.argmax(query_scores))
            if query_scores[best] >= knobs.threshold:
                return NO_CANDIDATE, None  # refused by the margin
        return query_scores[best], candidates[pair.b][best].question

    judged.verifier, judged.verifier_by_groups = scored(verified)
    return judged
