"""``reflex bench``: what a user asks about Reflex's speed, each figure a ratio to a baseline
measured in the same run (shared machines are noisy; a ratio of two runs taken in turns is
what stays comparable).

Sections (``--only`` picks some):

* ``l1``: L1-hit latency and throughput of ``reflex gateway`` against the fake upstream
  called directly and against a bare aiohttp handler (commands.bench_gateway);
* ``semantic``: L3-verified hit and miss latency through ``reflex serve`` (real models, Qdrant
  Edge) against the fake upstream called directly, back to back and with the machine idle
  before each request, as an agent's requests arrive (commands.bench_gateway);
* ``models``: embedder and verifier throughput at saturation and latency at idle, through
  their gRPC services, against the raw model in the same process (commands.bench_models);
* ``backends`` (only with ``--only``): each CPU inference backend's raw cost against torch
  fp32 in the same process (REFLEX_EMBEDDER_BACKEND / REFLEX_VERIFIER_BACKEND).

It prints a table (``--markdown``: the README's performance table; ``--json``: one object
with every figure). ``--quick`` finishes in about a minute on 2 cores. Speed targets are
checked by reading these figures, never by timed assertions in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import signal
import sys
from dataclasses import dataclass
from typing import Any

from commands.bench_common import Figure, Progress
from reflex.settings import ServeSettings

SECTIONS = ("l1", "semantic", "models")
# Run only when asked for (--only): it loads each model once per CPU backend.
EXTRA_SECTIONS = ("backends",)


@dataclass(frozen=True)
class Sizes:
    requests: int  # sequential requests per latency series (L1)
    semantic_requests: int
    duration: float  # seconds per throughput run
    rounds: int
    texts: int  # embedder throughput texts
    verifier_calls: int
    latency_samples: int


FULL = Sizes(requests=300, semantic_requests=60, duration=5.0, rounds=3, texts=1024, verifier_calls=128,
             latency_samples=100)
QUICK = Sizes(requests=60, semantic_requests=15, duration=2.0, rounds=1, texts=256, verifier_calls=32,
              latency_samples=25)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reflex bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, one round: about a minute on 2 cores")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default: {','.join(SECTIONS)}; "
                        f"also {','.join(EXTRA_SECTIONS)})")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    out.add_argument("--markdown", action="store_true", help="print the README's performance table")
    parser.add_argument("--redis", action="store_true",
                        help="also measure L1 in Redis (a throwaway redis-server; needs redis-server on PATH)")
    parser.add_argument("--connections", type=int, default=32, help="connections of the L1 throughput load")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent clients of the model throughput runs")
    parser.add_argument("--duration", type=float, help="seconds per L1 throughput run (default 5, quick 2)")
    parser.add_argument("--rounds", type=int, help="throughput rounds, each its own ratio (default 3, quick 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    return parser


async def run(args: argparse.Namespace, settings: ServeSettings, progress: Progress) -> dict[str, Any]:
    sizes = QUICK if args.quick else FULL
    duration = args.duration or sizes.duration
    rounds = args.rounds or sizes.rounds
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS) - set(EXTRA_SECTIONS)
    if unknown:
        raise SystemExit(f"reflex bench: unknown sections {sorted(unknown)} "
                         f"(choose from {', '.join(SECTIONS + EXTRA_SECTIONS)})")
    figures: list[Figure] = []
    # Models first: loading them in this process also fills the ONNX cache that the
    # `reflex serve` of the semantic section then reads.
    if "models" in sections:
        from commands.bench_models import bench_embedder, bench_verifier

        models = settings.models
        figures += await bench_embedder(progress, models, texts=sizes.texts, concurrency=args.concurrency,
                                        rounds=rounds, latency_samples=sizes.latency_samples,
                                        coalesce_max=settings.gateway.models.embedder_coalesce_max)
        embed = next(f for f in figures if f.key == "embed_latency")
        figures += await bench_verifier(progress, models, calls=sizes.verifier_calls,
                                        concurrency=min(args.concurrency, 16), rounds=rounds,
                                        latency_samples=sizes.latency_samples, embed_p50_ms=embed.value,
                                        verified=settings.gateway.verifier.candidates)
    if "backends" in sections:
        from commands.bench_models import bench_backends

        figures += await bench_backends(progress, settings.models, samples=sizes.latency_samples)
    if "l1" in sections or "semantic" in sections:
        from commands.bench_gateway import bench_l1, bench_semantic

        if "l1" in sections:
            figures += await bench_l1(progress, requests=sizes.requests, duration=duration,
                                      connections=args.connections, rounds=rounds, redis=args.redis)
        if "semantic" in sections:
            figures += await bench_semantic(progress, requests=sizes.semantic_requests)
    by_key = {f.key: f for f in figures}
    # What one L3 hit must at least pay: the raw models' work for one lookup (Embed of the
    # question, Score of the REFLEX_RERANKER_CANDIDATES candidates it sends).
    score_key = "score_verified_latency" if "score_verified_latency" in by_key else "score_latency"
    if {"l3_hit_latency", "embed_latency", score_key} <= set(by_key):
        raw = by_key["embed_latency"].baseline_value + by_key[score_key].baseline_value
        n = settings.gateway.verifier.candidates if score_key == "score_verified_latency" else 5
        figures.append(Figure(
            "l3_hit_vs_raw_models", section="semantic", what="L3-verified hit p50 against the raw models",
            value=by_key["l3_hit_latency"].value, unit="ms",
            baseline=f"raw Embed(1) + Score({n}) p50, same models", baseline_value=raw, better="lower",
        ))
    progress.step("done")
    return {
        "quick": bool(args.quick),
        "sections": sections,
        "machine": {"cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0))
                    if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                    "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"embedder_backend": settings.models.model.embedder_backend,
                     "verifier_backend": settings.models.model.verifier_backend,
                     "device": settings.models.model.device or "auto",
                     "cuda_graphs": settings.models.model.cuda_graphs,
                     "max_batch_wait_ms": settings.models.batching.max_batch_wait_ms,
                     # how `reflex serve` (the semantic section) calls its models
                     "serve_model_calls": settings.gateway.models.serve_model_calls},
        "figures": [f.as_json() for f in figures],
    }


def _fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"
    return f"{value:,.0f} {unit}"


def _spread(figure: dict[str, Any], times: str = "x") -> str:
    """The range of a throughput figure's per-round ratios. The figure is the median round, and on
    a shared machine the rounds of one run can differ by more than two settings do, so a reader
    needs the range to know whether a difference between rows is real."""
    ratios = figure["detail"].get("round_ratios") or []
    if len(ratios) < 2:
        return ""
    return f" (rounds {min(ratios):.2f}-{max(ratios):.2f}{times})"


def table(report: dict[str, Any]) -> str:
    rows = [("what", "figure", "baseline (same run)", "ratio")]
    for f in report["figures"]:
        rows.append((f["what"], _fmt(f["value"], f["unit"]), f"{f['baseline']}: {_fmt(f['baseline_value'], f['unit'])}",
                     f"{f['ratio']:.2f}x ({f['better']} is better){_spread(f)}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    s = report["settings"]
    lines.append(f"\nembedder {s['embedder_backend']}, verifier {s['verifier_backend']} (on a CPU; device "
                 f"{s['device']}), `reflex serve` calling them "
                 f"{'in process' if s.get('serve_model_calls') == 'in-process' else 'over gRPC'}, "
                 f"{report['machine']['usable_cores']} "
                 f"usable cores{', quick run' if report['quick'] else ''}")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    lines = ["| what | figure | baseline (same run) | ratio |", "|---|---|---|---|"]
    for f in report["figures"]:
        extra = ""
        if "added_ms" in f["detail"]:
            extra = f" (+{f['detail']['added_ms']:.2f} ms)"
        lines.append(f"| {f['what']} | {_fmt(f['value'], f['unit'])}{extra} | {f['baseline']}, "
                     f"{_fmt(f['baseline_value'], f['unit'])} | **{f['ratio']:.2f}×**{_spread(f, '×')} |")
    return "\n".join(lines)


def _interrupted(signum: int, frame: object) -> None:
    # SIGTERM (a timeout, a CI runner) unwinds like Ctrl-C, so each section's finally stops the
    # servers it started instead of leaving them orphaned.
    raise KeyboardInterrupt


def main(argv: list[str], settings: ServeSettings) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    progress = Progress(enabled=not args.no_progress)
    if settings.log_level.upper() != "DEBUG":
        # The in-process model servers log every start and stop at INFO; the progress lines
        # and the table are what this command shows.
        logging.getLogger().setLevel(logging.WARNING)
    report = asyncio.run(run(args, settings, progress))
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.markdown:
        print(markdown(report))
    else:
        print(table(report))
    return 0
