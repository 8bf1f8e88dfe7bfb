"""The README's correctness tables, from `reflex eval --json` runs made now (nothing typed by hand).

    .venv/bin/python scripts/correctness_table.py [--plots docs/eval] [--backends] [--before DIR] > table.md

Table 1, one row group per (pairs, mode): the shipped decision model at its threshold, the
previous verifier (the cross-encoder alone at its 0.92, REFLEX_VERIFIER_DECISION=off), and
cosine alone (pairwise) or cosine top-1 at the same number of hits (cache mode), all from the
same runs. ``--before DIR`` (for a new checkpoint) adds the release before as a row: DIR holds
the checkpoint it shipped with its ``decision.json``, and that checkpoint's cross-encoder alone
is then the "previous verifier". ``--backends`` adds table 2: each CPU inference backend pair at
the shipped defaults, cache mode, so the int8 choice is read against fp32 from one sitting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETS = (("devset-test", "devset test"), ("fow-cache", "fow-cache"), ("qqp-validation", "QQP validation"))
PREVIOUS_THRESHOLD = 0.92  # the cross-encoder alone's pick (MODEL_CARD.md, Threshold)


def run_eval(pairs: str, mode: str, *, env: dict[str, str] | None = None, threshold: float | None = None,
             plot: Path | None = None) -> dict:
    cmd = [str(ROOT / ".venv" / "bin" / "reflex"), "eval", "--pairs", pairs, "--mode", mode, "--json", "--no-progress"]
    if threshold is not None:
        cmd += ["--threshold", str(threshold)]
    if plot is not None:
        cmd += ["--plot", str(plot)]
    print(f"running: {' '.join(cmd[1:])} {env or ''}", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def at_targets(result: dict) -> list[str]:
    by_target = {round(p["target_false_hit_rate"], 4): p["hit_rate"] for p in result["operating_points"]}
    return [pct(by_target.get(t)) for t in (0.01, 0.02, 0.05)]


def at_threshold(result: dict) -> str:
    return f"{pct(result['hit_rate'])} / {pct(result['false_hit_rate'])} / {pct(result['precision'])}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plots", type=Path, help="also write the devset test curves here")
    parser.add_argument("--backends", action="store_true", help="also the table of inference backends")
    parser.add_argument("--no-qqp", action="store_true", help="leave out QQP validation (its runs are the long ones)")
    parser.add_argument("--before", type=Path,
                        help="the checkpoint released before (with its decision.json): a row of its own, and the "
                        "previous verifier's cross-encoder")
    args = parser.parse_args()
    lines = [
        "| pairs | mode | method | hit rate at ≤1% false hits | at ≤2% | at ≤5% "
        "| at the default threshold: hit / false-hit / precision |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    sets = [s for s in SETS if not (args.no_qqp and s[0] == "qqp-validation")]
    before_env = {"REFLEX_RERANKER_PATH": str(args.before.resolve())} if args.before else {}
    for pairs, label in sets:
        modes = ("pairwise",) if pairs == "qqp-validation" else ("pairwise", "cache")
        for n, mode in enumerate(modes):
            plot = args.plots / f"{pairs}-{mode}.png" if args.plots and pairs == "devset-test" else None
            shipped = run_eval(pairs, mode, plot=plot)
            previous = run_eval(pairs, mode, env={"REFLEX_VERIFIER_DECISION": "off", **before_env},
                                threshold=PREVIOUS_THRESHOLD)
            first = f"{label} ({shipped['pairs']:,})" if n == 0 else ""
            lines.append(f"| {first} | {mode} | **decision model ({shipped['threshold']:g})** | "
                         f"{' | '.join(at_targets(shipped))} | {at_threshold(shipped)} |")
            if args.before:
                before = run_eval(pairs, mode, env=before_env)
                lines.append(f"| | | release before ({before['threshold']:g}) | {' | '.join(at_targets(before))} | "
                             f"{at_threshold(before)} |")
            lines.append(f"| | | previous verifier ({PREVIOUS_THRESHOLD:g}) | {' | '.join(at_targets(previous))} | "
                         f"{at_threshold(previous)} |")
            if mode == "pairwise":
                lines.append(f"| | | cosine alone | {' | '.join(at_targets(shipped['baseline_cosine']))} | |")
            else:
                same = shipped["baseline_cosine_at_same_hits"]
                lines.append(f"| | | cosine top-1 at the same {same['hits']} hits | | | | {at_threshold(same)} |")
    print("\n".join(lines))
    if args.backends:
        cache_sets = [(pairs, label) for pairs, label in sets if pairs != "qqp-validation"]
        print()
        print("| embedder / verifier backend | "
              + " | ".join(f"{label}, cache: hit / false-hit / precision" for _, label in cache_sets) + " |")
        print("|---|" + "---|" * len(cache_sets))
        for embedder, verifier in (("onnx", "onnx"), ("onnx-int8", "onnx"), ("onnx-int8", "onnx-int8")):
            env = {"REFLEX_EMBEDDER_BACKEND": embedder, "REFLEX_VERIFIER_BACKEND": verifier}
            cells = [at_threshold(run_eval(pairs, "cache", env=env)) for pairs, _ in cache_sets]
            print(f"| {embedder} / {verifier} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
