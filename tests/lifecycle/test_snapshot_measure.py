"""The figures the README reports: the time and size of a snapshot of 50,000 entries (384-d vectors
and answers of about 1 KB, like all-MiniLM-L6-v2 entries), and the longest pause in serving while
it is taken. Slow (minutes on 2 cores); run with ``-m slow -s`` to see the figures.

The gateway runs on its own loop thread, the load on the test's loop: 8 clients send L1 hits and
semantic lookups (embed, L2 search, verify, then upstream and a write) without pause. The pause is
the longest request latency while the snapshot is written, against the longest over the same time
before it (same load, no snapshot)."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.gateway.l2.schema import RawPoint, point_id
from services.gateway.lifecycle import LIFECYCLE
from services.gateway.state import STATE
from tests.lifecycle.support import MODEL, TopicEmbedder, TopicVerifier, settings_for
from tests.support.fake_upstream import FakeUpstream
from tests.support.loop_thread import LoopThread

ENTRIES = 50_000
ANSWER = ("Use flexbox on the parent: display: flex; justify-content: center; align-items: center. " * 12)[:1000]


def filler(i: int, dim: int) -> RawPoint:
    import base64
    import random

    import orjson

    rnd = random.Random(i)
    vector = [rnd.gauss(0, 1) for _ in range(dim)]
    norm = sum(x * x for x in vector) ** 0.5
    entry_id = f"{i:064x}"
    entry = orjson.dumps({"v": 1, "id": entry_id, "q": f"stored question {i}", "t": time.time(),
                          "c": {"id": f"chatcmpl-{i}", "object": "chat.completion", "model": MODEL,
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": ANSWER}}],
                                "usage": {"prompt_tokens": 20, "completion_tokens": 200, "total_tokens": 220}}})
    return RawPoint(str(point_id(entry_id)), [x / norm for x in vector], {
        "tenant": f"tenant-{i % 20}", "model": MODEL, "context_hash": "ctx", "expires_at": time.time() + 86400,
        "question": f"stored question {i}", "entry": base64.b64encode(entry).decode(), "entry_id": entry_id,
        "created_at": time.time(), "size_bytes": 4 * dim + 20 + len(entry)})


async def load(url: str, stop: asyncio.Event, latencies: list[tuple[float, float]], worker: int) -> None:
    async with aiohttp.ClientSession() as session:
        n = 0
        while not stop.is_set():
            n += 1
            question = "repeat question" if n % 2 else f"new question {worker}-{n}-{uuid.uuid4().hex[:6]}"
            started = time.perf_counter()
            async with session.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer sk-{worker}"},
                                    json={"model": MODEL, "messages": [{"role": "user", "content": question}]}) as r:
                await r.read()
                assert r.status == 200
            latencies.append((started, time.perf_counter() - started))


@pytest.mark.slow
def test_snapshot_of_50k_entries_time_size_and_longest_pause(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    from services.gateway.main import GatewayServer

    dim = 384
    thread = LoopThread("measured-gateway")
    settings = settings_for(fake_upstream, tmp_path / "data",
                            l1_capacity=10_000, embedder_timeout_ms=20_000, verifier_timeout_ms=20_000)

    async def start() -> Any:
        server = GatewayServer(settings, embedder=TopicEmbedder(dimension=dim), verifier=TopicVerifier())
        await server.start()
        l2 = await server.app[STATE].cascade.l2_admin()
        for start_at in range(0, ENTRIES, 1000):
            await l2.import_points([filler(i, dim) for i in range(start_at, start_at + 1000)])
        await l2.optimize()
        return server

    server = thread.run(start(), timeout=900)
    try:
        async def measure() -> dict[str, float]:
            latencies: list[tuple[float, float]] = []
            stop = asyncio.Event()
            workers = [asyncio.create_task(load(server.url, stop, latencies, w)) for w in range(8)]
            await asyncio.sleep(3)  # warm
            latencies.clear()
            base_start = time.perf_counter()
            await asyncio.sleep(8)
            base_end = time.perf_counter()
            snap_start = time.perf_counter()
            manifest = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                server.app[LIFECYCLE].snapshot(server.app, str(tmp_path / "snaps")), thread.loop))
            snap_end = time.perf_counter()
            stop.set()
            await asyncio.gather(*workers)
            idle_start = time.perf_counter()  # the same store again, with no traffic
            idle = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                server.app[LIFECYCLE].snapshot(server.app, str(tmp_path / "snaps")), thread.loop))
            idle_s = time.perf_counter() - idle_start
            before = [d for s, d in latencies if base_start <= s < base_end]
            during = [d for s, d in latencies if snap_start <= s < snap_end]
            return {
                "entries_l2": manifest.counts["l2"], "entries_l1": manifest.counts["l1"],
                "snapshot_s": snap_end - snap_start, "snapshot_mb": manifest.total_bytes / 1e6,
                "l2_part_mb": manifest.parts["l2.bin.gz"].bytes / 1e6,
                "max_before_ms": max(before) * 1000, "max_during_ms": max(during) * 1000,
                "p50_before_ms": statistics.median(before) * 1000, "p50_during_ms": statistics.median(during) * 1000,
                "p99_before_ms": sorted(before)[int(len(before) * 0.99)] * 1000,
                "p99_during_ms": sorted(during)[int(len(during) * 0.99)] * 1000,
                "requests_before": len(before), "requests_during": len(during),
                "cores": os.cpu_count() or 0,
                "idle_snapshot_s": idle_s, "idle_snapshot_mb": idle.total_bytes / 1e6,
                "idle_entries_l2": idle.counts["l2"],
            }

        figures = asyncio.run(measure())
        print("\nSNAPSHOT FIGURES", figures)
        assert figures["entries_l2"] >= ENTRIES
    finally:
        thread.run(server.stop(), timeout=600)
        thread.close()
