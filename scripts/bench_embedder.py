"""Benchmark the model services, as ratios against baselines measured in the same run.

1. Embedder throughput at saturation: texts/s through gRPC (many concurrent clients, one text
   per call as the gateway sends them) against the same loaded model's raw batched forward
   pass in the same process (no gRPC, no batcher; the better of batches of
   REFLEX_MAX_BATCH_SIZE and of 16 rows).
2. Latency at idle: p50 of Embed(1 short text) and p50 of Score(query, 5 candidates); the
   verifier's cost target is Score(5) <= 4 x one embedding.

Texts are questions from the QQP dev pairs (../shared/data/qqp_dev.jsonl.gz by default).

    python scripts/bench_embedder.py [--texts 1024] [--concurrency 64] [--rounds 3] [--data PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reflex.settings import ModelServiceSettings  # noqa: E402
from services.embedder.main import start_embedder_server  # noqa: E402
from services.gateway.model_clients import GrpcEmbedder, GrpcVerifier  # noqa: E402
from services.verifier.cross_encoder import default_model_path as shipped_verifier  # noqa: E402
from services.verifier.main import start_verifier_server  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "qqp_dev.jsonl.gz"


def load_questions(path: Path, n: int) -> list[str]:
    out: list[str] = []
    with gzip.open(path, "rt") as f:
        for line in f:
            row = json.loads(line)
            out.extend((row["a"], row["b"]))
            if len(out) >= n:
                break
    return out[:n]


def raw_forward_rate(model, texts: list[str], batch_size: int) -> tuple[float, float]:
    """(texts/s of forward alone, texts/s of tokenize + forward), sequential, same model."""
    chunks = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
    prepared = [model.collate(model.tokenize(c)) for c in chunks]
    start = time.perf_counter()
    for batch in prepared:
        model.forward(batch)
    forward_only = len(texts) / (time.perf_counter() - start)
    start = time.perf_counter()
    for c in chunks:
        model.forward(model.collate(model.tokenize(c)))
    with_tokenize = len(texts) / (time.perf_counter() - start)
    return forward_only, with_tokenize


async def grpc_rate(client: GrpcEmbedder, texts: list[str], concurrency: int) -> float:
    queue = list(reversed(texts))

    async def worker() -> None:
        while queue:
            await client.embed([queue.pop()], timeout=120)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(texts) / (time.perf_counter() - start)


async def interleaved_p50s(calls: list, n: int) -> list[float]:
    """p50 latency of each call, taking turns so that load drift on the machine hits all alike."""
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(n):
        for call, out in zip(calls, samples, strict=True):
            start = time.perf_counter()
            await call()
            out.append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--verifier-path", type=Path, default=None,
                        help="cross-encoder dir (default: the shipped model, else one built from MiniLM's 6 layers)")
    args = parser.parse_args()

    settings = ModelServiceSettings.from_env()
    texts = load_questions(args.data, args.texts)
    embedder = await start_embedder_server(settings, 0)
    model = embedder.backend
    print(f"embedder: {model.name} on {model.runtime.device}/{model.runtime.dtype_name}, "
          f"threads={model.runtime.threads}, max_batch_size={settings.batching.max_batch_size}, "
          f"max_wait={settings.batching.max_batch_wait_ms} ms, {len(texts)} QQP questions")

    # Baseline and gRPC alternate, and each round gives its own ratio: on a shared machine the
    # load drifts, and a ratio of two rates measured back to back suffers far less from it.
    client = GrpcEmbedder(f"127.0.0.1:{embedder.port}")
    await grpc_rate(client, texts[:128], args.concurrency)  # warm-up
    ratios_fwd, ratios_tok = [], []
    for round_no in range(args.rounds):
        # The stricter baseline: the better of max-size batches and small ones (small batches
        # pad less and stay in cache on a CPU, so they can beat max-size ones).
        raw = [await asyncio.to_thread(raw_forward_rate, model, texts, size)
               for size in sorted({settings.batching.max_batch_size, 16})]
        raw_f, raw_t = max(r[0] for r in raw), max(r[1] for r in raw)
        grpc_r = await grpc_rate(client, texts, args.concurrency)
        ratios_fwd.append(grpc_r / raw_f)
        ratios_tok.append(grpc_r / raw_t)
        print(f"round {round_no + 1}: raw forward {raw_f:7.1f} texts/s, raw tokenize+forward {raw_t:7.1f} texts/s, "
              f"gRPC ({args.concurrency} clients x 1 text) {grpc_r:7.1f} texts/s")
    reg = embedder.registry
    rows = reg.get_sample_value("reflex_embedder_batch_size_sum") or 0.0
    passes = reg.get_sample_value("reflex_embedder_batch_size_count") or 1.0
    padded = reg.get_sample_value("reflex_embedder_batch_tokens_sum") or 0.0
    print(f"gRPC batches: {rows / passes:.1f} rows on average, {padded / max(rows, 1):.1f} padded tokens per row")
    print(f"gRPC / raw batched forward:            median {statistics.median(ratios_fwd):.2f}x "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios_fwd)})")
    print(f"gRPC / raw tokenize + batched forward: median {statistics.median(ratios_tok):.2f}x "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios_tok)})")

    query = "How do I center a div in CSS?"
    with tempfile.TemporaryDirectory() as tmp:
        path = args.verifier_path
        if path is None:
            path = shipped_verifier() if (shipped_verifier() / "config.json").is_file() else None
        if path is None:
            from tests.support.models import build_tiny_cross_encoder  # MiniLM-sized, untrained head

            path = build_tiny_cross_encoder(Path(tmp) / "cross-encoder", num_layers=6)
        verifier = await start_verifier_server(settings.replace(reranker_path=path), 0)
        vclient = GrpcVerifier(f"127.0.0.1:{verifier.port}")
        candidates = [
            "What's the CSS to center a div horizontally and vertically?",
            "How can I center a div with flexbox?",
            "How do I center text in a div?",
            "How do I vertically align a div in CSS?",
            "What is the best way to center an element in HTML?",
        ]
        await vclient.score(query, candidates, timeout=30)
        embed_p50, score_p50 = await interleaved_p50s(
            [lambda: client.embed([query], timeout=30), lambda: vclient.score(query, candidates, timeout=30)],
            args.latency_samples,
        )
        print(f"p50 Embed(1 short text):        {embed_p50 * 1e3:8.2f} ms")
        print(f"p50 Score(query, 5 candidates): {score_p50 * 1e3:8.2f} ms  = {score_p50 / embed_p50:.2f}x one "
              f"embedding (target <= 4x); verifier model: {verifier.backend.name} "
              f"({verifier.backend.model.config.num_hidden_layers} layers)")
        await vclient.close()
        await verifier.stop(0)
    await client.close()
    await embedder.stop(0)


if __name__ == "__main__":
    asyncio.run(main())
