"""``reflex bench``'s model sections: the embedder and the verifier, each through its real gRPC
service and dynamic batcher, against the same loaded model's raw forward pass in the same
process (no gRPC, no batcher), whatever REFLEX_EMBEDDER_BACKEND, REFLEX_VERIFIER_BACKEND and
REFLEX_DEVICE select.

* Throughput at saturation: many concurrent clients (one text each at a time, through the
  gateway's own client, which sends the lookups made while an Embed call is in flight together,
  REFLEX_EMBEDDER_COALESCE_MAX; and also one text per call, the server's per-call overhead
  unshared; one query with 5 candidates per Score call), in a process of their own as the
  gateway is when deployed (``LoadProcess``), against the raw model run
  sequentially on batches of REFLEX_MAX_BATCH_SIZE and of 16 rows, whichever is faster (small
  batches pad less and stay in cache on a CPU). The raw rate excludes tokenizing: the strict
  ceiling. Raw and gRPC runs take turns, one ratio per round.
* Latency at idle: p50 of Embed(1 short text) and of Score(query, 5 candidates), against the
  raw tokenize + forward of the same input, calls taking turns.

Texts are the questions of the fow-cache pairs (the package ``reflex eval`` uses), or a fixed
synthetic set where it is not installed.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from commands.bench_common import Figure, Progress
from reflex.settings import ModelServiceSettings

QUERY = "How do I center a div in CSS?"
CANDIDATES = [
    "What's the CSS to center a div horizontally and vertically?",
    "How can I center a div with flexbox?",
    "How do I center text in a div?",
    "How do I vertically align a div in CSS?",
    "What is the best way to center an element in HTML?",
]
# What L2 would send with them (the gateway passes each candidate's cosine, so Score runs the
# decision model too): fixed values, since only the cost is measured here.
COSINES = [0.82, 0.74, 0.71, 0.69, 0.66]


def bench_texts(n: int) -> list[str]:
    try:
        from commands.eval.data import load_pairs

        pairs = load_pairs("fow-cache")
        texts = list(dict.fromkeys(t for p in pairs for t in (p.a, p.b)))
    except (ImportError, OSError, ValueError):  # fow-cache is in the [eval] extra; [models] alone still benches
        texts = [f"How do I {verb} a {noun} in {lang}?" for verb in ("sort", "reverse", "copy", "parse", "merge")
                 for noun in ("list", "dictionary", "string", "file", "JSON document", "date")
                 for lang in ("Python", "Rust", "Go", "JavaScript", "Java", "C++", "Kotlin")]
    return [texts[i % len(texts)] for i in range(n)]


def raw_rates(model: Any, items: Sequence[Any], batch_size: int) -> tuple[float, float]:
    """(items/s of the forward pass alone, items/s of tokenize + pad + forward), sequential."""
    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    prepared = [model.collate(model.tokenize(c)) for c in chunks]
    start = time.perf_counter()
    for batch in prepared:
        model.forward(batch)
    forward_only = len(items) / (time.perf_counter() - start)
    start = time.perf_counter()
    for c in chunks:
        model.forward(model.collate(model.tokenize(c)))
    with_tokenize = len(items) / (time.perf_counter() - start)
    return forward_only, with_tokenize


async def best_raw_rates(model: Any, items: Sequence[Any], max_batch_size: int) -> tuple[float, float]:
    rates = [await asyncio.to_thread(raw_rates, model, items, size) for size in sorted({max_batch_size, 16})]
    return max(r[0] for r in rates), max(r[1] for r in rates)


async def saturate(call: Callable[[Any], Awaitable[Any]], work: Sequence[Any], concurrency: int) -> float:
    """Work items per second with ``concurrency`` callers each sending one item at a time."""
    queue = list(reversed(work))

    async def worker() -> None:
        while queue:
            await call(queue.pop())

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(work) / (time.perf_counter() - start)


async def _load_loop(conn: Any, kind: str, address: str, concurrency: int, coalesce_max: int) -> None:
    from services.gateway.model_clients import GrpcEmbedder, GrpcVerifier

    client = GrpcEmbedder(address, coalesce_max=coalesce_max) if kind == "embed" else GrpcVerifier(address)

    def call(item: str) -> Awaitable[Any]:
        if kind == "embed":
            return client.embed([item], timeout=120)
        return client.score(item, CANDIDATES, COSINES, timeout=120)

    try:
        while (items := await asyncio.to_thread(conn.recv)) is not None:
            try:
                conn.send(("ok", await saturate(call, items, concurrency)))
            except Exception as exc:  # reported to the parent, which raises it there
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        await client.close()


def _load_main(conn: Any, kind: str, address: str, concurrency: int, coalesce_max: int) -> None:
    asyncio.run(_load_loop(conn, kind, address, concurrency, coalesce_max))


class LoadProcess:
    """The saturating clients, in a process of their own. Deployed, the model servers' callers
    are gateway replicas in other processes (other pods); clients on the server's own event loop
    would charge their serialising and scheduling to the server being measured (py-spy: with
    int8 models the one loop, not the model, was the limit). ``run(items)`` -> items/s."""

    def __init__(self, kind: str, address: str, concurrency: int, coalesce_max: int = 1) -> None:
        ctx = multiprocessing.get_context("spawn")  # no forked copy of the loaded models or the loop
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_load_main, args=(child, kind, address, concurrency, coalesce_max),
                                    daemon=True,
                                    name=f"reflex-bench-{kind}-load")
        self._process.start()
        child.close()

    async def run(self, items: Sequence[str]) -> float:
        self._conn.send(list(items))
        try:
            status, value = await asyncio.to_thread(self._conn.recv)
        except EOFError:
            raise RuntimeError(f"the load process exited (code {self._process.exitcode})") from None
        if status != "ok":
            raise RuntimeError(f"load process: {value}")
        return value

    async def close(self) -> None:
        if self._process.is_alive():
            self._conn.send(None)
            await asyncio.to_thread(self._process.join, 30)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()


async def interleaved_p50s(calls: Sequence[Callable[[], Awaitable[Any]]], n: int) -> list[float]:
    """p50 seconds of each call, the calls taking turns so that load drift hits all alike."""
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(n):
        for call, out in zip(calls, samples, strict=True):
            start = time.perf_counter()
            await call()
            out.append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


def _median_round(ratios: list[float]) -> int:
    return sorted(range(len(ratios)), key=lambda k: ratios[k])[len(ratios) // 2]


def _describe(model: Any, settings: ModelServiceSettings) -> dict[str, Any]:
    return {"model": model.name, "device": str(model.runtime.device), "backend": model.runtime.dtype_name,
            "threads": model.runtime.threads, "max_batch_size": settings.batching.max_batch_size,
            "max_batch_wait_ms": settings.batching.max_batch_wait_ms}


async def bench_embedder(progress: Progress, settings: ModelServiceSettings, *, texts: int, concurrency: int,
                         rounds: int, latency_samples: int, coalesce_max: int = 1) -> list[Figure]:
    """``coalesce_max``: the gateway's REFLEX_EMBEDDER_COALESCE_MAX. The clients use the
    gateway's own client with it; when it is over 1, one text per call is timed too, in the
    same rounds (what the server's per-call overhead costs without the sharing)."""
    from services.embedder.main import start_embedder_server
    from services.gateway.model_clients import GrpcEmbedder

    progress.step(f"embedder: loading (REFLEX_EMBEDDER_BACKEND={settings.model.embedder_backend} on a CPU)")
    server = await start_embedder_server(settings, 0)
    model = server.backend
    address = f"127.0.0.1:{server.port}"
    client = GrpcEmbedder(address, coalesce_max=coalesce_max)
    loads = {"gateway": LoadProcess("embed", address, concurrency, coalesce_max)}
    if coalesce_max > 1:
        loads["per_text"] = LoadProcess("embed", address, concurrency, 1)
    figures: list[Figure] = []

    def counts() -> tuple[float, float, float]:
        """(Embed RPCs, rows run, forward passes) so far."""
        get = server.registry.get_sample_value
        return (get("reflex_embedder_requests_total", {"method": "Embed"}) or 0.0,
                get("reflex_embedder_batch_size_sum") or 0.0, get("reflex_embedder_batch_size_count") or 0.0)

    try:
        work = bench_texts(texts)
        about = _describe(model, settings) | {"clients": "a separate process"}
        for load in loads.values():
            await load.run(work[:64])  # warm-up
        ratios: dict[str, list[float]] = {name: [] for name in loads}
        rates: dict[str, list[float]] = {name: [] for name in loads}
        per_call: dict[str, list[float]] = {name: [] for name in loads}
        per_batch: dict[str, list[float]] = {name: [] for name in loads}
        raws, raws_tok = [], []
        for r in range(rounds):
            progress.step(f"embedder throughput, round {r + 1}/{rounds}: {len(work)} texts raw, then through gRPC "
                          f"({concurrency} clients x 1 text; REFLEX_EMBEDDER_COALESCE_MAX={coalesce_max}"
                          + (", then 1" if len(loads) > 1 else "") + ")")
            raw_f, raw_t = await best_raw_rates(model, work, settings.batching.max_batch_size)
            raws.append(raw_f)
            raws_tok.append(raw_t)
            for name, load in loads.items():
                before = counts()
                rate = await load.run(work)
                calls, rows, passes = (a - b for a, b in zip(counts(), before, strict=True))
                rates[name].append(rate)
                ratios[name].append(rate / raw_f)
                per_call[name].append(len(work) / max(calls, 1.0))
                per_batch[name].append(rows / max(passes, 1.0))

        def throughput(name: str, key: str, how: str, **extra: Any) -> Figure:
            k = _median_round(ratios[name])
            return Figure(
                key, section="models", what=f"embedder throughput at saturation (gRPC, {how})",
                value=rates[name][k], unit="texts/s", baseline="raw batched forward, same model and process",
                baseline_value=raws[k], better="higher",
                detail=about | {"round_ratios": ratios[name], "texts_per_call": per_call[name][k],
                                "mean_rows_per_batch": per_batch[name][k],
                                "raw_tokenize_and_forward": raws_tok[k],
                                "vs_raw_tokenize_and_forward": rates[name][k] / raws_tok[k],
                                "texts": len(work), "concurrency": concurrency} | extra,
            )

        figures.append(throughput("gateway", "embedder_throughput", "the gateway's client", coalesce_max=coalesce_max))
        if "per_text" in loads:
            figures.append(throughput("per_text", "embedder_throughput_per_text_calls", "one text per call"))
        progress.step(f"embedder latency: {latency_samples} x Embed(1 text), turns with the raw model")

        def raw_one() -> Any:
            return model.forward(model.collate(model.tokenize([QUERY])))

        embed_p50, raw_p50 = await interleaved_p50s(
            [lambda: client.embed([QUERY], timeout=30), lambda: asyncio.to_thread(raw_one)], latency_samples)
        figures.append(Figure(
            "embed_latency", section="models", what="Embed p50, batch 1 (gRPC)", value=embed_p50 * 1e3, unit="ms",
            baseline="raw tokenize + forward of 1 text", baseline_value=raw_p50 * 1e3, better="lower",
            detail=about | {"samples": latency_samples, "coalesce_max": coalesce_max},
        ))
    finally:
        for load in loads.values():
            await load.close()
        await client.close()
        await server.stop(0)
    return figures


async def bench_verifier(progress: Progress, settings: ModelServiceSettings, *, calls: int, concurrency: int,
                         rounds: int, latency_samples: int, embed_p50_ms: float | None,
                         verified: int = len(CANDIDATES)) -> list[Figure]:
    """``verified``: the candidates one L3 lookup sends (REFLEX_RERANKER_CANDIDATES); when it is
    not 5, Score of that many is timed too, in the same turns."""
    from services.gateway.model_clients import GrpcVerifier
    from services.verifier.main import start_verifier_server

    progress.step(f"verifier: loading (REFLEX_VERIFIER_BACKEND={settings.model.verifier_backend} on a CPU)")
    server = await start_verifier_server(settings, 0)
    model = server.backend
    client = GrpcVerifier(f"127.0.0.1:{server.port}")
    load = LoadProcess("score", f"127.0.0.1:{server.port}", concurrency)
    figures: list[Figure] = []
    try:
        about = _describe(model, settings) | {"clients": "a separate process"}
        queries = bench_texts(calls)
        pairs = [(q, c) for q in queries for c in CANDIDATES]
        await load.run(queries[:concurrency])  # warm-up
        ratios, raws, grpcs = [], [], []
        for r in range(rounds):
            progress.step(f"verifier throughput, round {r + 1}/{rounds}: {len(pairs)} pairs raw, then "
                          f"{calls} Score calls of 5 ({concurrency} clients)")
            raw_f, _ = await best_raw_rates(model, pairs, settings.batching.max_batch_size)
            call_rate = await load.run(queries)
            raws.append(raw_f)
            grpcs.append(call_rate * len(CANDIDATES))
            ratios.append(grpcs[-1] / raw_f)
        k = _median_round(ratios)
        figures.append(Figure(
            "verifier_throughput", section="models", what="verifier throughput at saturation (gRPC, Score of 5)",
            value=grpcs[k], unit="pairs/s", baseline="raw batched forward, same model and process",
            baseline_value=raws[k], better="higher", detail=about | {"round_ratios": ratios, "calls": calls},
        ))
        progress.step(f"verifier latency: {latency_samples} x Score(query, 5 candidates), turns with the raw model")
        sizes = [len(CANDIDATES)] + ([verified] if verified != len(CANDIDATES) else [])

        def timed(n: int) -> list[Callable[[], Awaitable[Any]]]:
            pairs_n = [(QUERY, c) for c in CANDIDATES[:n]]

            def raw() -> Any:
                return model.forward(model.collate(model.tokenize(pairs_n)))

            return [lambda: client.score(QUERY, CANDIDATES[:n], COSINES[:n], timeout=30), lambda: asyncio.to_thread(raw)]

        p50s = await interleaved_p50s([call for n in sizes for call in timed(n)], latency_samples)
        for i, n in enumerate(sizes):
            score_p50, raw_p50 = p50s[2 * i], p50s[2 * i + 1]
            figures.append(Figure(
                "score_latency" if n == len(CANDIDATES) else "score_verified_latency", section="models",
                what=f"Score p50, {n} candidate{'s' if n > 1 else ''} (gRPC)"
                + ("" if n == len(CANDIDATES) else ", what one L3 lookup sends"),
                value=score_p50 * 1e3, unit="ms", baseline=f"raw tokenize + forward of the {n} pair{'s' if n > 1 else ''}",
                baseline_value=raw_p50 * 1e3, better="lower", detail=about | {"samples": latency_samples},
            ))
        score_p50 = p50s[0]
        if embed_p50_ms:
            figures.append(Figure(
                "score_vs_embed", section="models", what="Score(5) p50 against Embed(1) p50",
                value=score_p50 * 1e3, unit="ms", baseline="Embed p50, batch 1 (gRPC)", baseline_value=embed_p50_ms,
                better="lower", detail={"target": "<= 4x"},
            ))
    finally:
        await load.close()
        await client.close()
        await server.stop(0)
    return figures


BACKENDS = ("torch", "onnx", "onnx-int8", "torch-int8")


async def bench_backends(progress: Progress, settings: ModelServiceSettings, *, samples: int) -> list[Figure]:
    """Each CPU backend's raw cost against torch fp32, in this process, calls taking turns:
    one query through the embedder and 5 pairs through the verifier (what one L3 lookup runs).
    Not in the default sections: it loads every model four times (and exports the ONNX files
    on a first run)."""
    import torch

    from services.embedder.model import EmbeddingModel
    from services.embedder.model import resolve_model_path as embedder_path
    from services.verifier.cross_encoder import CrossEncoderModel
    from services.verifier.cross_encoder import resolve_model_path as verifier_path

    if settings.model.device not in (None, "cpu") or torch.cuda.is_available() and settings.model.device is None:
        progress.step("backends: skipped (these are CPU backends; set REFLEX_DEVICE=cpu to compare them)")
        return []
    figures: list[Figure] = []
    five = [(QUERY, c) for c in CANDIDATES]
    for kind, items, load in (
        ("embedder", [QUERY], lambda b: EmbeddingModel(embedder_path(settings.model),
                                                       settings.replace(embedder_backend=b).model)),
        ("verifier", five, lambda b: CrossEncoderModel(verifier_path(settings.model),
                                                       settings.replace(verifier_backend=b).model)),
    ):
        progress.step(f"backends: loading the {kind} with each of {', '.join(BACKENDS)}")
        models = {b: await asyncio.to_thread(load, b) for b in BACKENDS}

        def call(model: Any, work: list[Any] = items) -> Callable[[], Awaitable[Any]]:
            return lambda: asyncio.to_thread(lambda: model.forward(model.collate(model.tokenize(work))))

        progress.step(f"backends: {samples} turns of {'1 query' if kind == 'embedder' else '5 pairs'} each")
        p50s = dict(zip(BACKENDS, await interleaved_p50s([call(m) for m in models.values()], samples), strict=True))
        for backend in BACKENDS[1:]:
            figures.append(Figure(
                f"{kind}_{backend.replace('-', '_')}_latency", section="backends",
                what=f"{kind} {backend}, raw p50 of {'1 query' if kind == 'embedder' else '5 pairs'}",
                value=p50s[backend] * 1e3, unit="ms", baseline="torch fp32, same input",
                baseline_value=p50s["torch"] * 1e3, better="lower", detail={"samples": samples},
            ))
    return figures
