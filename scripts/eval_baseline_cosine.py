#!/usr/bin/env python
"""Cosine alone against the verifier: the README's correctness table, from `reflex eval` runs.

Each run goes through the real embedder, verifier and L2 store (see ``reflex eval --help``);
the cosine baseline comes from the same run's similarities, so both rows of a block saw
exactly the same pairs and candidates. Prints a Markdown table and, with --out, keeps each
run's full JSON report (sweeps, per-category numbers, timings).

    python scripts/eval_baseline_cosine.py                       # QQP validation + fow-cache, both modes
    python scripts/eval_baseline_cosine.py --limit 2000 --out /tmp/eval
    python scripts/eval_baseline_cosine.py --set fow-cache:pairwise

Settings come from REFLEX_* as for `reflex eval` (REFLEX_RERANKER_THRESHOLD, REFLEX_L2_*,
REFLEX_QQP_PATH, REFLEX_RERANKER_PATH...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from reflex.settings import EvalSettings
from commands.eval.cli import build_result, measure, parse_args, plot_result
from commands.eval.data import load_pairs

DEFAULT_SETS = ["qqp-validation:pairwise", "qqp-validation:cache", "fow-cache:pairwise", "fow-cache:cache"]
TARGETS = (0.01, 0.02, 0.05)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def run_one(source: str, mode: str, args: argparse.Namespace, settings: EvalSettings) -> dict[str, Any]:
    argv = ["--pairs", source, "--mode", mode, "--json", "--cache-dir", str(args.cache_dir)]
    for target in TARGETS:
        argv += ["--target-fhr", str(target)]
    if args.limit:
        argv += ["--limit", str(args.limit)]
    if args.out:
        argv += ["--plot", str(args.out / f"{source}-{mode}.png")]
    eval_args = parse_args(argv, settings)
    pairs = load_pairs(source, limit=args.limit, qqp_path=settings.training.qqp_path)
    measured = asyncio.run(measure(pairs, eval_args, settings))
    result = build_result(pairs, measured, eval_args, settings)
    if args.out:
        plot_result(pairs, measured, result, eval_args)
    return result


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| pairs | mode | method | hit rate at ≤1% false hits | at ≤2% | at ≤5% "
        "| at the configured threshold: hit rate / false-hit rate / precision |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in results:
        name = f"{r['source']} ({r['pairs']})"
        for label, block, at_threshold in (
            ("all-MiniLM-L6-v2 cosine alone", r.get("baseline_cosine", r), False),
            (f"shipped verifier ({r['models'].get('verifier', {}).get('model_name', '?')})", r, True),
        ):
            points = {p["target_false_hit_rate"]: p for p in block["operating_points"]}
            cells = [_pct(points[t].get("hit_rate")) for t in TARGETS]
            configured = (
                f"{_pct(block['hit_rate'])} / {_pct(block['false_hit_rate'])} / {_pct(block['precision'])} "
                f"(threshold {block['threshold']:.2f})"
                if at_threshold
                else "–"
            )
            lines.append(f"| {name} | {r['mode']} | {label} | " + " | ".join(cells) + f" | {configured} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", help="SOURCE:MODE to run (repeatable; default: all four)")
    parser.add_argument("--limit", type=int, help="a seeded sample of N pairs per set (QQP validation is ~5.5k)")
    parser.add_argument("--out", type=Path, help="directory for each run's JSON report and sweep plot")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "reflex" / "eval")
    args = parser.parse_args()
    settings = EvalSettings.from_env()
    results = []
    for spec in args.set or DEFAULT_SETS:
        source, _, mode = spec.partition(":")
        print(f"running {source} in {mode or 'cache'} mode...", file=sys.stderr)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
        result = run_one(source, mode or "cache", args, settings)
        results.append(result)
        if args.out:
            (args.out / f"{source}-{result['mode']}.json").write_text(json.dumps(result, indent=1) + "\n")
        t = result["timings"]
        print(
            f"  {result['pairs']} pairs in {t['total_s']:.0f} s (embed {t['embed_s']:.0f} s, "
            f"score {t.get('score_s', 0):.0f} s over {t['candidates_scored']} candidates)",
            file=sys.stderr,
        )
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
