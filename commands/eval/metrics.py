"""The arithmetic of a cache's correctness, from one stored score per pair.

Every pair is reduced to three facts that do not depend on the threshold:

* ``score``: what the cache compares with the threshold for the entry it would serve
  (the verifier probability of the best candidate, or the cosine for the baseline);
  ``-inf`` when no candidate passed the L2 cosine floor, a miss at every threshold;
  ``+inf`` for an L1 exact hit (cache mode), a hit at every threshold;
* ``right``: whether serving that entry's answer would be correct for ``b``;
* ``duplicate``: the label.

At threshold ``t`` a pair is a hit when ``score >= t`` (the gateway's rule). Because the
served entry is fixed, raising ``t`` can only turn hits into misses, so the whole sweep
comes from one pass of scoring: nothing is re-run per threshold.

Definitions (also in the report):

* hit rate = right hits on duplicate pairs / duplicate pairs;
* false-hit rate = wrong hits on non-duplicate pairs / non-duplicate pairs;
* wrong-entry hits = duplicate pairs served another entry's answer (cache mode only):
  a wrong answer, counted against precision though not in the false-hit rate, whose
  denominator the issue fixes as the non-duplicates;
* precision = right hits / all hits.

A rate whose denominator is zero is ``None`` (JSON null): a set of traps alone has no
hit rate, and a threshold that serves nothing has no precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

NO_CANDIDATE = -math.inf
# Cache mode: the query's exact text is stored, so L1 answers it before L2 and the verifier
# are asked; a hit at every threshold.
L1_HIT = math.inf


@dataclass(frozen=True, slots=True)
class Scored:
    """One row per pair, in pair order."""

    score: np.ndarray  # float64, NO_CANDIDATE where nothing passed the floor
    right: np.ndarray  # bool
    duplicate: np.ndarray  # bool

    @classmethod
    def build(cls, score: Sequence[float], right: Sequence[bool], duplicate: Sequence[bool]) -> "Scored":
        s = np.asarray(score, dtype=np.float64)
        r = np.asarray(right, dtype=bool)
        d = np.asarray(duplicate, dtype=bool)
        if not (s.shape == r.shape == d.shape) or s.ndim != 1:
            raise ValueError("score, right and duplicate must be 1-D and of equal length")
        if np.isnan(s).any():
            raise ValueError("a score is NaN")
        return cls(s, r, d)

    def subset(self, mask: np.ndarray) -> "Scored":
        return Scored(self.score[mask], self.right[mask], self.duplicate[mask])

    def __len__(self) -> int:
        return int(self.score.shape[0])


@dataclass(frozen=True, slots=True)
class Metrics:
    threshold: float
    pairs: int
    duplicates: int
    non_duplicates: int
    hits: int
    right_hits: int  # hits whose answer is correct for the query
    duplicate_hits: int  # right hits on duplicate pairs (numerator of hit_rate)
    false_hits: int  # wrong hits on non-duplicate pairs (numerator of false_hit_rate)
    wrong_entry_hits: int  # duplicate pairs served another entry's answer
    hit_rate: float | None
    false_hit_rate: float | None
    precision: float | None
    wrong_entry_rate: float | None  # wrong_entry_hits / duplicates

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def metrics_at(scored: Scored, threshold: float) -> Metrics:
    hit = scored.score >= threshold
    dup, right = scored.duplicate, scored.right
    n_dup = int(dup.sum())
    n_non = len(scored) - n_dup
    hits = int(hit.sum())
    right_hits = int((hit & right).sum())
    duplicate_hits = int((hit & right & dup).sum())
    false_hits = int((hit & ~right & ~dup).sum())
    wrong_entry_hits = int((hit & ~right & dup).sum())
    return Metrics(
        threshold=float(threshold),
        pairs=len(scored),
        duplicates=n_dup,
        non_duplicates=n_non,
        hits=hits,
        right_hits=right_hits,
        duplicate_hits=duplicate_hits,
        false_hits=false_hits,
        wrong_entry_hits=wrong_entry_hits,
        hit_rate=ratio(duplicate_hits, n_dup),
        false_hit_rate=ratio(false_hits, n_non),
        precision=ratio(right_hits, hits),
        wrong_entry_rate=ratio(wrong_entry_hits, n_dup),
    )


def metrics_at_hits(scored: Scored, hits: int) -> Metrics:
    """Metrics of ``scored`` at (about) ``hits`` hits: the highest threshold is the one with the
    most hits not above ``hits`` (ties in the scores can make the exact count unreachable).
    For "cosine top-1 at the same hit rate as the verifier", from the same run."""
    served = np.sort(scored.score[scored.score > NO_CANDIDATE])[::-1]
    if hits <= 0 or served.size == 0:
        return metrics_at(scored, math.inf)  # only the L1 exact hits (score inf), which every scorer serves
    hits = min(hits, served.size)
    threshold = served[hits - 1]
    if hits < served.size and served[hits] == threshold:
        # A tie straddles the count: the next score up keeps the hits at or under it.
        above = served[served > threshold]
        threshold = above[-1] if above.size else np.nextafter(threshold, math.inf)
    return metrics_at(scored, float(threshold))


def per_category(scored: Scored, categories: Sequence[str | None], threshold: float) -> dict[str, Metrics]:
    """Metrics at ``threshold`` for each category present (pairs without one are left out)."""
    labels = np.asarray([c if c is not None else "" for c in categories], dtype=object)
    out: dict[str, Metrics] = {}
    for name in sorted({c for c in categories if c is not None}):
        out[name] = metrics_at(scored.subset(labels == name), threshold)
    return out


def sweep(scored: Scored, thresholds: Sequence[float]) -> list[Metrics]:
    """Metrics at each threshold, from sorted scores (O(n log n + k log n), not O(n k))."""
    dup, right, score = scored.duplicate, scored.right, scored.score
    groups = {
        "dup_right": np.sort(score[dup & right]),
        "dup_wrong": np.sort(score[dup & ~right]),
        "non_right": np.sort(score[~dup & right]),
        "non_wrong": np.sort(score[~dup & ~right]),
    }

    def at_or_above(name: str, t: float) -> int:
        arr = groups[name]
        return int(arr.shape[0] - np.searchsorted(arr, t, side="left"))

    n_dup = int(dup.sum())
    n_non = len(scored) - n_dup
    out = []
    for t in thresholds:
        dr, dw = at_or_above("dup_right", t), at_or_above("dup_wrong", t)
        nr, nw = at_or_above("non_right", t), at_or_above("non_wrong", t)
        hits = dr + dw + nr + nw
        out.append(
            Metrics(
                threshold=float(t),
                pairs=len(scored),
                duplicates=n_dup,
                non_duplicates=n_non,
                hits=hits,
                right_hits=dr + nr,
                duplicate_hits=dr,
                false_hits=nw,
                wrong_entry_hits=dw,
                hit_rate=ratio(dr, n_dup),
                false_hit_rate=ratio(nw, n_non),
                precision=ratio(dr + nr, hits),
                wrong_entry_rate=ratio(dw, n_dup),
            )
        )
    return out


def sweep_grid() -> list[float]:
    """Thresholds 0.00, 0.01, ... 1.00, plus 0.991 ... 0.999.

    Scores and cosines that matter lie in [0, 1]. The extra points are where a confident
    verifier, and cosine on near-repeats, make most of their decisions: at steps of 0.01
    the whole low-false-hit end of the curve would be one or two points.
    """
    coarse = [round(i / 100, 10) for i in range(101)]
    fine = [round(0.99 + i / 1000, 10) for i in range(1, 10)]
    return sorted(coarse + fine)


def threshold_for_false_hit_rate(scored: Scored, target: float) -> float | None:
    """The lowest threshold whose false-hit rate is at most ``target``.

    Every count falls as the threshold rises, so the lowest such threshold also has the
    highest hit rate. It is exact, not read off a grid: it is one of the scores (or just
    above the highest trap when even one false hit is too many). ``None`` when there are no
    non-duplicates (no false-hit rate to hold) or no pair reached the verifier at all.
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError("target false-hit rate must be in [0, 1]")
    n_non = int((~scored.duplicate).sum())
    finite = np.isfinite(scored.score)
    if n_non == 0 or not finite.any():
        return None
    allowed = math.floor(target * n_non + 1e-9)
    traps = np.sort(scored.score[~scored.duplicate & ~scored.right & finite])[::-1]
    candidates = np.unique(scored.score[finite])  # ascending
    if allowed >= traps.shape[0]:
        return float(candidates[0])  # every trap may hit: serve everything that reached L3
    limit = traps[allowed]  # the highest trap score that must become a miss
    above = candidates[candidates > limit]
    return float(above[0]) if above.shape[0] else float(np.nextafter(limit, math.inf))
