"""Which L2 candidate, if any, is served: the one cache-mode rule, shared by the gateway's
cascade (services/gateway/cascade.py), ``reflex eval`` (commands/eval) and the verifier's
decision model (services/verifier/decision.py, ``DecisionModel.choose``).

Pure and dependency-free, so that every caller runs the very same decision: the gateway may
not import the verifier service, and an evaluation that decided differently from the gateway
would measure something nobody serves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def shortlist(candidates: Sequence[T], limit: int) -> list[T]:
    """The candidates the verifier scores: the first ``limit`` of L2's, nearest first.

    Why not all of them: re-ranking several near entries by the verifier let the best-scoring
    one be a wrong entry more often than cosine's own first choice (GPTCache's benchmark, issue
    of the second verifier round). Verifying only the nearest entry (REFLEX_RERANKER_CANDIDATES,
    default 1) served the same paraphrases of the hand-written devset and raised fow-cache's
    cache-mode precision at the shipped threshold from 94.9% to 96.9% (wrong-entry hits 0.3% ->
    0%), and a lookup scores one pair instead of five (MODEL_CARD.md, README).
    """
    return list(candidates[:limit])


def choose(scores: Sequence[float], threshold: float, margin: float = 0.0) -> int | None:
    """The index of the candidate to serve, or None for a miss.

    The best candidate by (calibrated) probability is served when it reaches ``threshold``
    and, when ``margin`` > 0 and a second candidate also reaches the threshold, leads that one
    by at least ``margin``: two stored questions that both look like the query are a sign
    that it sits between two entries (near-duplicates that want different answers), and a
    miss there costs only a model call where a wrong pick serves a wrong answer. With
    ``margin`` 0 (the shipped decision model's) this is "the best, if it reaches the threshold".

    On a tie the earlier candidate wins (L2 returns them most similar first). A non-finite
    score is never a yes, and never the reason for a refusal either.
    """
    best: int | None = None
    for i, s in enumerate(scores):
        if math.isfinite(s) and (best is None or s > scores[best]):
            best = i
    if best is None or scores[best] < threshold:
        return None
    if margin > 0:
        runner_up = max((s for i, s in enumerate(scores) if i != best and math.isfinite(s)), default=None)
        if runner_up is not None and runner_up >= threshold and scores[best] - runner_up < margin:
            return None
    return best
