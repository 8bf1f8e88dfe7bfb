"""``reflex eval``: hit rate, false-hit rate and precision of the cache on labelled pairs."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from commands.eval.data import (
    DEVSET_TEST,
    FOW_CACHE,
    QQP_VALIDATION,
    Pair,
    PairsError,
    load_pairs,
)
from commands.eval.embedding import EmbeddingCache, embed_texts
from commands.eval.metrics import (
    Scored,
    metrics_at,
    metrics_at_hits,
    sweep,
    sweep_grid,
    threshold_for_false_hit_rate,
)
from commands.eval.modes import Judged, Knobs, Mode, run_cache, run_pairwise
from commands.eval.report import DEFINITIONS, render_text, scorer_block
from commands.eval.tiers import EvalTiers, open_tiers
from reflex.settings import EvalSettings
from reflex.tiers import TierUnavailable

DEFAULT_TARGETS = (0.01, 0.02, 0.05)
# Bulk calls wait behind each other in the services' queues, so the gateway's interactive
# deadlines (REFLEX_*_TIMEOUT_MS, about 2 s) would fail a healthy run under load.
DEFAULT_CALL_TIMEOUT_SECS = 120.0
# Embed calls in flight: enough that the service always has the next chunk queued while the
# client decodes the last reply; more would only wait in its queue.
EMBED_CALLS_IN_FLIGHT = 4
# The eval store lives in a temporary directory for one run; entries only need to outlive it.
EVAL_TTL_SECS = 7 * 24 * 3600


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reflex eval",
        description="Measure the cache's hit rate on duplicates, false-hit rate on non-duplicates and "
        "precision of hits, through the real embedder, verifier and L2 store with the configured "
        "thresholds (REFLEX_L2_TOP_K, REFLEX_L2_MIN_SIMILARITY, REFLEX_RERANKER_CANDIDATES, REFLEX_RERANKER_THRESHOLD). "
        "The embedder and verifier start in-process unless REFLEX_EMBEDDER_URL / REFLEX_VERIFIER_URL "
        "are set; L2 is a throwaway Qdrant Edge shard in a temporary directory.",
        epilog="Definitions: " + DEFINITIONS,
    )
    parser.add_argument(
        "--pairs",
        required=True,
        help=f"JSONL file of {{\"a\", \"b\", \"duplicate\"[, \"category\"]}} (.gz allowed), "
        f"'{FOW_CACHE}' for the 600 question pairs bundled in the fow-cache package, '{QQP_VALIDATION}' "
        "for the verifier's held-out validation split of the QQP dev file (REFLEX_QQP_PATH), or "
        f"'{DEVSET_TEST}' (also 'devset-validation', 'devset') for the hand-written development set's "
        "test part (services/verifier/training/data/devset.jsonl; never trained or calibrated on)",
    )
    parser.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        default=Mode.CACHE.value,
        help="pairwise: each b against its own a. cache (default): every a stored first, then every b "
        "queried, so wrong entries compete; a hit on another entry counts as wrong",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--threshold",
        type=float,
        help="score threshold for this run (default REFLEX_RERANKER_THRESHOLD; with --verifier none, "
        "a cosine threshold, defaulting to the one meeting the first --target-fhr)",
    )
    parser.add_argument(
        "--target-fhr",
        type=float,
        action="append",
        help="false-hit rate to find the threshold for (repeatable; default 0.01, 0.02, 0.05)",
    )
    parser.add_argument("--plot", type=Path, help="write the threshold sweep to this PNG")
    parser.add_argument("--limit", type=int, help="evaluate a seeded random sample of N pairs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit sample (default 0)")
    parser.add_argument(
        "--verifier",
        choices=["service", "none"],
        default="service",
        help="none: no verifier, the nearest entry's cosine is the score (the baseline most semantic "
        "caches ship). The cosine baseline is also reported alongside every verifier run",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="Score / search calls in flight (default 16): enough to keep the verifier's batcher full, "
        "while staying far under its queue bound",
    )
    parser.add_argument(
        "--embed-chunk",
        type=int,
        help="texts per Embed call (default 256, or REFLEX_MAX_QUEUE / 4 if smaller): 4 calls are in flight, and "
        "the service refuses more queued texts than its queue bound",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_CALL_TIMEOUT_SECS, help="seconds per service call (default 120)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "reflex" / "eval",
        help="where embeddings are cached between runs (default ~/.cache/reflex/eval)",
    )
    parser.add_argument("--no-embedding-cache", action="store_true", help="embed every text afresh")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (also off with --json or no TTY)")
    return parser


def parse_args(argv: list[str], settings: EvalSettings) -> argparse.Namespace:
    """Parse and check ``reflex eval`` arguments, filling the defaults that depend on settings.
    ``args.targets`` holds the false-hit targets. Exits with status 2 on a bad argument."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.targets = tuple(args.target_fhr or DEFAULT_TARGETS)
    for value, name in [(args.threshold, "--threshold"), *((t, "--target-fhr") for t in args.targets)]:
        if value is not None and not 0.0 <= value <= 1.0:
            parser.error(f"{name} must be between 0 and 1 (got {value})")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.embed_chunk is None:
        args.embed_chunk = max(1, min(256, settings.models.batching.max_queue // EMBED_CALLS_IN_FLIGHT))
    if args.concurrency < 1 or args.embed_chunk < 1:
        parser.error("--concurrency and --embed-chunk must be at least 1")
    return args


def main(argv: list[str], settings: EvalSettings) -> int:
    args = parse_args(argv, settings)
    try:
        pairs = load_pairs(args.pairs, limit=args.limit, seed=args.seed, qqp_path=settings.training.qqp_path)
    except PairsError as exc:
        print(f"reflex eval: {exc}", file=sys.stderr)
        return 2
    try:
        measured = asyncio.run(measure(pairs, args, settings))
    except TierUnavailable as exc:
        print(f"reflex eval: {exc}", file=sys.stderr)
        return 1
    result = build_result(pairs, measured, args, settings)
    if args.plot:
        plot_result(pairs, measured, result, args)
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        print(render_text(result))
    return 0


@dataclass(slots=True)
class Measured:
    judged: Judged
    models: dict[str, dict[str, Any]]
    timings: dict[str, Any]


async def measure(pairs: list[Pair], args: argparse.Namespace, settings: EvalSettings) -> Measured:
    """Everything that talks to the services: embed, (store, search,) score. Raises TierUnavailable."""
    started = time.perf_counter()
    timings: dict[str, Any] = {}
    mode = Mode(args.mode)
    knobs = Knobs(
        top_k=settings.l2.top_k,
        min_similarity=settings.l2.min_similarity,
        concurrency=args.concurrency,
        timeout=args.timeout,
        ttl_secs=EVAL_TTL_SECS,
        progress=not (args.json or args.no_progress) and sys.stderr.isatty(),
        threshold=args.threshold if args.threshold is not None else settings.verifier.threshold,
        margin=settings.verifier.margin,
        verified=settings.verifier.candidates,
    )
    async with open_tiers(
        settings, verifier=args.verifier == "service", l2=mode is Mode.CACHE, call_timeout_secs=args.timeout
    ) as tiers:
        timings["start_s"] = time.perf_counter() - started
        phase = time.perf_counter()
        vectors, from_cache = await _embed(pairs, tiers, args, knobs)
        timings["embed_s"] = time.perf_counter() - phase
        timings["texts_embedded"] = len(vectors)
        timings["texts_from_cache"] = from_cache
        if mode is Mode.PAIRWISE:
            judged = await run_pairwise(pairs, vectors, tiers.verifier, knobs)
        else:
            assert tiers.l2 is not None
            judged = await run_cache(pairs, vectors, tiers.l2, tiers.verifier, knobs)
        models = tiers.models
    for name, seconds in judged.timings.items():
        timings[f"{name}_s"] = seconds
    timings["score_calls"] = judged.score_calls
    timings["candidates_scored"] = judged.candidates_scored
    timings["total_s"] = time.perf_counter() - started
    return Measured(judged, models, timings)


def _primary(judged: Judged) -> tuple[str, Scored]:
    return ("verifier", judged.verifier) if judged.verifier is not None else ("cosine", judged.cosine)


def _threshold(
    judged: Judged, args: argparse.Namespace, settings: EvalSettings, targets: tuple[float, ...]
) -> tuple[float, str]:
    """The threshold of the headline numbers, and where it came from."""
    if args.threshold is not None:
        return args.threshold, "--threshold"
    if judged.verifier is not None:
        return settings.verifier.threshold, "REFLEX_RERANKER_THRESHOLD"
    # Cosine has no configured threshold (REFLEX_RERANKER_THRESHOLD is a probability):
    # report it where it meets the first false-hit target.
    found = threshold_for_false_hit_rate(judged.cosine, targets[0])
    return (found, f"--target-fhr {targets[0]:g}") if found is not None else (1.0, "default 1.0")


def build_result(pairs: list[Pair], measured: Measured, args: argparse.Namespace, settings: EvalSettings) -> dict[str, Any]:
    targets = args.targets
    judged = measured.judged
    scorer, primary = _primary(judged)
    threshold, source = _threshold(judged, args, settings, targets)
    categories = [p.category for p in pairs]
    result: dict[str, Any] = {
        "source": args.pairs,
        "mode": args.mode,
        "scorer": scorer,
        "threshold": threshold,
        "threshold_source": source,
        "l2_top_k": settings.l2.top_k,
        "verified_candidates": settings.verifier.candidates,
        "l2_min_similarity": settings.l2.min_similarity,
        **scorer_block(primary, threshold, targets, categories),
    }
    if args.mode == Mode.CACHE.value:
        result["entries"] = len({p.a for p in pairs})
        result["exact_repeats"] = judged.exact_repeats
        lenient = judged.verifier_by_groups if judged.verifier is not None else judged.cosine_by_groups
        if lenient is not None:
            # The same hits, judged with entries the labels join to b counted right, at the
            # headline threshold and at each operating point's (strict) threshold.
            at = [threshold] + [p["threshold"] for p in result["operating_points"] if p["threshold"] is not None]
            result["by_duplicate_groups"] = [metrics_at(lenient, t).as_dict() for t in at]
    if judged.verifier is not None:
        # The same run's cosines, so "cosine alone" and "verifier" are compared on equal terms.
        baseline = scorer_block(judged.cosine, _baseline_threshold(judged, targets), targets, categories)
        result["baseline_cosine"] = {k: v for k, v in baseline.items() if k != "per_category"}
        # Cosine top-1 at the verifier's hit count, so that their precisions compare at equal
        # hit rates (in cache mode the decision rule must never do worse than its own input).
        result["baseline_cosine_at_same_hits"] = metrics_at_hits(judged.cosine, result["hits"]).as_dict()
    result["models"] = measured.models
    result["timings"] = measured.timings
    result["definitions"] = DEFINITIONS
    if args.plot:
        result["plot"] = str(args.plot)
    return result


def plot_result(pairs: list[Pair], measured: Measured, result: dict[str, Any], args: argparse.Namespace) -> None:
    from commands.eval.plot import plot_sweep

    scorer, primary = _primary(measured.judged)
    plot_sweep(
        args.plot,
        title=f"reflex eval: {Path(args.pairs).name}, {len(pairs)} pairs, {args.mode} mode",
        scorer_label="verifier score" if scorer == "verifier" else "cosine similarity",
        curve=sweep(primary, sweep_grid()),
        threshold=result["threshold"],
        threshold_label=result["threshold_source"],
        scored=primary,
        baseline=measured.judged.cosine if measured.judged.verifier is not None else None,
        operating_points=[(p["target_false_hit_rate"], p["threshold"]) for p in result["operating_points"]],
    )


def _baseline_threshold(judged: Judged, targets: tuple[float, ...]) -> float:
    # The baseline has no configured threshold; its headline row sits at the first target.
    found = threshold_for_false_hit_rate(judged.cosine, targets[0])
    return found if found is not None else 1.0


async def _embed(
    pairs: list[Pair], tiers: EvalTiers, args: argparse.Namespace, knobs: Knobs
) -> tuple[dict[str, np.ndarray], int]:
    from tqdm import tqdm

    texts = list(dict.fromkeys([p.a for p in pairs] + [p.b for p in pairs]))
    cache = None
    if not args.no_embedding_cache:
        cache = EmbeddingCache(args.cache_dir / "embeddings.sqlite3", tiers.embedder_identity)
    try:
        with tqdm(total=len(texts), desc="embed", unit="text", disable=not knobs.progress, leave=False) as bar:
            return await embed_texts(
                tiers.embedder,
                texts,
                chunk_size=args.embed_chunk,
                concurrency=EMBED_CALLS_IN_FLIGHT,
                timeout=knobs.timeout,
                cache=cache,
                on_progress=bar.update,
            )
    finally:
        if cache is not None:
            cache.close()
