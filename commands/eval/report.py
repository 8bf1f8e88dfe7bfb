"""Turning a measurement into the report: one JSON object, or text for a person."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from commands.eval.metrics import Scored, metrics_at, per_category, sweep, sweep_grid, threshold_for_false_hit_rate

DEFINITIONS = (
    "hit rate = duplicates served a right answer / duplicates; "
    "false-hit rate = non-duplicates served a wrong answer / non-duplicates; "
    "precision = right hits / all hits; "
    "wrong-entry hit (cache mode) = a duplicate served another stored question's answer, counted as wrong; "
    "a query stored verbatim (cache mode) is an L1 exact hit: right, at every threshold; "
    "'by duplicate groups' also counts as right any entry joined to the query by duplicate labels."
)

# The sweep rows printed as text: coarse below 0.9, denser where verifiers decide.
_TEXT_SWEEP_ROWS = {round(i / 10, 6) for i in range(11)} | {0.92, 0.94, 0.96, 0.98, 0.99, 0.995, 0.999}


def operating_points(scored: Scored, targets: Sequence[float]) -> list[dict[str, Any]]:
    """For each target false-hit rate, the lowest threshold meeting it and what it yields."""
    out = []
    for target in targets:
        threshold = threshold_for_false_hit_rate(scored, target)
        point: dict[str, Any] = {"target_false_hit_rate": target, "threshold": threshold}
        if threshold is not None:
            m = metrics_at(scored, threshold)
            point |= {k: getattr(m, k) for k in ("hit_rate", "false_hit_rate", "precision", "wrong_entry_rate")}
        out.append(point)
    return out


def scorer_block(
    scored: Scored, threshold: float, targets: Sequence[float], categories: Sequence[str | None]
) -> dict[str, Any]:
    """Everything measured for one scorer (verifier or cosine) at ``threshold``."""
    return metrics_at(scored, threshold).as_dict() | {
        "operating_points": operating_points(scored, targets),
        "per_category": {k: v.as_dict() for k, v in per_category(scored, categories, threshold).items()},
        "sweep": [m.as_dict() for m in sweep(scored, sweep_grid())],
    }


def _pct(value: float | None) -> str:
    return "    -" if value is None else f"{100 * value:5.1f}%"


def _row(label: str, m: dict[str, Any], width: int, wrong_entry: bool) -> str:
    row = (
        f"  {label:<{width}} {_pct(m.get('hit_rate')):>9} {_pct(m.get('false_hit_rate')):>15}"
        f" {_pct(m.get('precision')):>10}"
    )
    return row + (f" {_pct(m.get('wrong_entry_rate')):>12}" if wrong_entry else "")


def _header(first: str, width: int, wrong_entry: bool) -> str:
    head = f"  {first:<{width}} {'hit rate':>9} {'false-hit rate':>15} {'precision':>10}"
    return head + (f" {'wrong-entry':>12}" if wrong_entry else "")


def render_text(result: dict[str, Any]) -> str:
    lines: list[str] = []
    scorer = result["scorer"]
    lines.append(
        f"reflex eval: {result['source']}: {result['pairs']} pairs "
        f"({result['duplicates']} duplicates, {result['non_duplicates']} non-duplicates), mode {result['mode']}"
    )
    models = result.get("models", {})
    model_text = ", ".join(f"{k} {v.get('model_name', '?')}" for k, v in models.items())
    lines.append(
        f"scorer: {scorer} ({model_text}); threshold {result['threshold']:.3f} from {result['threshold_source']}; "
        f"L2 floor {result['l2_min_similarity']:.2f}, top-k {result['l2_top_k']}, verified "
        f"{result['verified_candidates']}"
    )
    if result["mode"] == "cache":
        lines.append(
            f"cache: {result['entries']} distinct stored questions; "
            f"{result['exact_repeats']} queries are stored verbatim (L1 exact hits, served at every threshold)"
        )
    lines.append("")
    width = 28
    # Wrong entries only exist when entries compete (cache mode).
    wrong = result["mode"] == "cache"
    lines.append(_header("", width, wrong))
    lines.append(_row(f"{scorer} @ {result['threshold']:.3f}", result, width, wrong))
    same_hits = result.get("baseline_cosine_at_same_hits")
    if same_hits:
        lines.append(_row(f"cosine, same hits ({same_hits['hits']})", same_hits, width, wrong))
    baseline = result.get("baseline_cosine")

    lines.append("")
    lines.append("operating points (lowest threshold whose false-hit rate meets the target):")
    lines.append(_header("target -> threshold", width, wrong))
    blocks = [(scorer, result)] + ([("cosine", baseline)] if baseline else [])
    for name, block in blocks:
        for point in block["operating_points"]:
            t = point["threshold"]
            label = f"{name} ≤{100 * point['target_false_hit_rate']:g}% -> " + ("n/a" if t is None else f"{t:.4f}")
            lines.append(_row(label, point, width, wrong))

    if result.get("by_duplicate_groups"):
        lines.append("")
        lines.append("the same hits, counting an entry the labels make a duplicate of b (a~b, a'~b) as right:")
        lines.append(_header("", width, wrong))
        labels = [f"{scorer} @ {result['threshold']:.3f}"] + [
            f"{scorer} ≤{100 * p['target_false_hit_rate']:g}% -> {p['threshold']:.4f}"
            for p in result["operating_points"]
            if p["threshold"] is not None
        ]
        for label, m in zip(labels, result["by_duplicate_groups"], strict=True):
            lines.append(_row(label, m, width, wrong))

    if result["per_category"]:
        lines.append("")
        lines.append(f"per category ({scorer} @ {result['threshold']:.3f}):")
        lines.append(_header("category (pairs)", width, wrong))
        for name, m in result["per_category"].items():
            lines.append(_row(f"{name} ({m['pairs']})", m, width, wrong))

    lines.append("")
    lines.append(f"threshold sweep ({scorer}; full curve in --json / --plot):")
    lines.append(_header("threshold", width, wrong))
    for m in result["sweep"]:
        if round(m["threshold"], 6) in _TEXT_SWEEP_ROWS:
            lines.append(_row(f"{m['threshold']:g}", m, width, wrong))

    t = result["timings"]
    lines.append("")
    lines.append(
        "timings: "
        + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in t.items() if k.endswith("_s"))
        + f"; {t['texts_embedded']} texts embedded ({t['texts_from_cache']} from the embedding cache)"
        + (f", {t['score_calls']} Score calls over {t['candidates_scored']} candidates" if t.get("score_calls") else "")
    )
    lines.append("definitions: " + DEFINITIONS)
    return "\n".join(lines)

