"""The threshold sweep as a picture: what people tuning a cache look at instead of a table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from commands.eval.metrics import Metrics, Scored, sweep

# Enough points for a smooth trade-off curve, few enough to draw instantly for 56k pairs.
_CURVE_POINTS = 1000


def _trade_off(scored: Scored) -> tuple[np.ndarray, np.ndarray]:
    """(false-hit rate, hit rate) at thresholds taken from the scores themselves.

    Read off the scores, not a fixed grid, because the interesting part of the curve (false
    hits under a few percent) sits in a narrow band of thresholds close to 1.
    """
    finite = np.unique(scored.score[np.isfinite(scored.score)])
    if finite.shape[0] > _CURVE_POINTS:
        finite = finite[np.linspace(0, finite.shape[0] - 1, _CURVE_POINTS).astype(int)]
    points = sweep(scored, [*finite.tolist(), float(np.nextafter(finite[-1], np.inf))] if finite.size else [1.0])
    fhr = np.array([m.false_hit_rate or 0.0 for m in points])
    hit = np.array([m.hit_rate or 0.0 for m in points])
    return fhr, hit


def plot_sweep(
    path: Path,
    *,
    title: str,
    scorer_label: str,
    curve: Sequence[Metrics],
    threshold: float,
    threshold_label: str,
    scored: Scored,
    baseline: Scored | None,
    operating_points: Sequence[tuple[float, float | None]] = (),
) -> None:
    """Left: hit and false-hit rate against the threshold, the threshold in use marked.
    Right: hit rate against false-hit rate for the scorer and the cosine baseline, which
    compares them fairly whatever their score scales."""
    import matplotlib

    # Agg: no display on servers and CI, and no GUI toolkit to import.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = [m.threshold for m in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    fig.suptitle(title)

    def pct(values: Sequence[float | None]) -> list[float]:
        return [np.nan if v is None else 100 * v for v in values]

    left.plot(thresholds, pct([m.hit_rate for m in curve]), color="tab:blue", lw=2, label="hit rate (duplicates)")
    left.plot(
        thresholds,
        pct([m.false_hit_rate for m in curve]),
        color="tab:red",
        lw=2,
        label="false-hit rate (non-duplicates)",
    )
    if any(m.wrong_entry_hits for m in curve):
        left.plot(
            thresholds,
            pct([m.wrong_entry_rate for m in curve]),
            color="tab:orange",
            lw=1.5,
            ls="--",
            label="wrong-entry hits on duplicates",
        )
    left.axvline(threshold, color="black", ls="--", lw=1.2, label=f"{threshold_label} = {threshold:.3f}")
    # One legend entry per target rather than text on the lines: the lines are often a
    # hair apart near 1, where labels would overprint each other.
    styles = [":", "-.", (0, (3, 1, 1, 1, 1, 1)), (0, (5, 2))]
    for i, (target, t) in enumerate(operating_points):
        if t is not None:
            left.axvline(t, color="tab:green", ls=styles[i % len(styles)], lw=1.2,
                         label=f"≤{100 * target:g}% false hits at {t:.4f}")
    left.set_xlabel(f"threshold ({scorer_label})")
    left.set_ylabel("% of pairs")
    left.set_xlim(min(thresholds), max(thresholds))
    left.set_ylim(0, 100)
    left.grid(alpha=0.3)
    left.legend(loc="best", fontsize=8)
    left.set_title("rates against the threshold")

    fhr, hit = _trade_off(scored)
    right.plot(100 * fhr, 100 * hit, color="tab:blue", lw=2, label=scorer_label)
    if baseline is not None:
        b_fhr, b_hit = _trade_off(baseline)
        right.plot(100 * b_fhr, 100 * b_hit, color="tab:gray", lw=1.5, ls="--", label="cosine alone (baseline)")
    right.set_xlabel("false-hit rate (%)")
    right.set_ylabel("hit rate on duplicates (%)")
    right.set_xlim(0, 20)  # past 20% false hits no cache is usable; the low end is what matters
    right.set_ylim(0, 100)
    right.grid(alpha=0.3)
    right.legend(loc="lower right", fontsize=9)
    right.set_title("trade-off (left part: the usable range)")

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
