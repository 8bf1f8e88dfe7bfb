#!/usr/bin/env python3
"""Gateway overhead, measured against baselines taken in the same run.

1. Latency (sequential requests over one keep-alive connection, p50/p99):
   the fake upstream called directly, versus the same request through the gateway as an
   L1 hit and as a miss (a new question each time, so the lookup, the upstream call and the
   background write all happen). Reported as added milliseconds and as ratios.
2. Throughput of L1 hits (requests/s) versus a bare aiohttp handler returning a fixed JSON
   body, both driven by the same load generator (``wrk`` when installed, else an aiohttp
   load loop in a separate process).

Every server runs in its own process (fake upstream, gateway, bare handler), so none of
them shares a GIL with the client. Usage:
    python scripts/bench_gateway.py [--requests 400] [--duration 5] [--connections 32] [--redis]
    python scripts/bench_gateway.py --semantic [--requests 200]   (issue 3's L3-hit / miss p50)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.redis_server import RedisServer, free_port  # noqa: E402

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
HEADERS = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json", "X-Reflex-Format": "raw"}

BARE_SERVER = """
import sys
from aiohttp import web
import orjson
BODY = orjson.dumps({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}]})
async def handle(request):
    await request.read()
    return web.Response(body=BODY, content_type="application/json")
app = web.Application()
app.router.add_post("/v1/chat/completions", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

LOAD_LOOP = """
import asyncio, sys, time, aiohttp, json
url, body, headers, duration, conns = sys.argv[1], sys.argv[2].encode(), json.loads(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
async def worker(session, stop, counts):
    while time.perf_counter() < stop:
        async with session.post(url, data=body, headers=headers) as r:
            await r.read()
            counts[0 if r.status == 200 else 1] += 1
async def main():
    counts = [0, 0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as session:
        start = time.perf_counter(); stop = start + duration
        await asyncio.gather(*(worker(session, stop, counts) for _ in range(conns)))
        print(json.dumps({"rps": counts[0] / (time.perf_counter() - start), "errors": counts[1]}))
asyncio.run(main())
"""


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_up(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.1)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


Request = tuple[dict, dict]  # (JSON body, headers)


def same_request(i: int) -> Request:
    return BODY, HEADERS


def new_question(i: int) -> Request:
    return dict(BODY, messages=[{"role": "user", "content": f"question {time.time_ns()} {i}"}]), HEADERS


async def latencies(url: str, n: int, make: Callable[[int], Request], check_status: str | None, warmup: int = 20) -> list[float]:
    out: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for i in range(n + warmup):  # the first requests warm up connections and caches
            body, headers = make(i)
            started = time.perf_counter()
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()
                elapsed = time.perf_counter() - started
                assert response.status == 200, response.status
                if check_status is not None and i >= warmup:
                    assert response.headers["X-Reflex-Status"] == check_status, response.headers["X-Reflex-Status"]
            if i >= warmup:
                out.append(elapsed * 1000)
    return out


def load(url: str, duration: float, connections: int) -> float:
    if shutil.which("wrk"):
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(
                f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(BODY))}\n'
                + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in HEADERS.items())
            )
        result = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", "-s", script.name, url],
            capture_output=True, text=True, check=True,
        )
        os.unlink(script.name)
        if "Non-2xx" in result.stdout:
            raise RuntimeError("non-2xx responses under load:\n" + result.stdout)
        line = next(l for l in result.stdout.splitlines() if l.startswith("Requests/sec"))
        return float(line.split()[1])
    result = subprocess.run(
        [sys.executable, "-c", LOAD_LOOP, url, json.dumps(BODY), json.dumps(HEADERS), str(duration), str(connections)],
        capture_output=True, text=True, check=True,
    )
    data = json.loads(result.stdout)
    if data["errors"]:
        raise RuntimeError(f"{data['errors']} failed requests under load")
    return float(data["rps"])


def fmt(values: list[float]) -> str:
    return f"p50 {percentile(values, 50):7.3f} ms  p99 {percentile(values, 99):7.3f} ms"


async def run(args: argparse.Namespace) -> None:
    upstream_port, gateway_port, bare_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    redis = RedisServer().start() if args.redis else None
    try:
        procs.append(spawn([sys.executable, "-m", "tests.support.fake_upstream", "--port", str(upstream_port)]))
        gateway_env = {
            "REFLEX_PORT": str(gateway_port),
            "REFLEX_UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}/v1",
            "REFLEX_SEMANTIC": "0",
            "REFLEX_LOG_LEVEL": "WARNING",
            "REFLEX_MAX_INFLIGHT": "4096",
        }
        if redis is not None:
            gateway_env["REFLEX_REDIS_URL"] = redis.url
        procs.append(spawn([sys.executable, "-c", "import sys; from commands.cli import main; sys.exit(main(['gateway']))"], gateway_env))
        procs.append(spawn([sys.executable, "-c", BARE_SERVER, str(bare_port)]))
        upstream = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
        gateway = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
        bare = f"http://127.0.0.1:{bare_port}/v1/chat/completions"
        await wait_up(f"http://127.0.0.1:{upstream_port}/v1/models")
        await wait_up(f"http://127.0.0.1:{gateway_port}/healthz")
        await wait_up(f"http://127.0.0.1:{bare_port}/", timeout=30)

        direct = await latencies(upstream, args.requests, same_request, None)
        hit = await latencies(gateway, args.requests, same_request, "hit-l1-exact")
        miss = await latencies(gateway, args.requests, new_question, "miss")
        direct_again = await latencies(upstream, args.requests, new_question, None)
        base = direct + direct_again
        p50_base, p99_base = percentile(base, 50), percentile(base, 99)
        print(f"L1 backend: {'redis' if redis else 'memory'}; {args.requests} sequential requests per series")
        print(f"  fake upstream direct : {fmt(base)}")
        print(f"  gateway, L1 hit      : {fmt(hit)}   added p50 {percentile(hit, 50) - p50_base:+.3f} ms, "
              f"p99 {percentile(hit, 99) - p99_base:+.3f} ms  ({percentile(hit, 50) / p50_base:.2f}x of direct)")
        print(f"  gateway, miss        : {fmt(miss)}   added p50 {percentile(miss, 50) - p50_base:+.3f} ms, "
              f"p99 {percentile(miss, 99) - p99_base:+.3f} ms  ({percentile(miss, 50) / p50_base:.2f}x of direct)")

        tool = "wrk" if shutil.which("wrk") else "aiohttp load loop"
        bare_rps = load(bare, args.duration, args.connections)
        hit_rps = load(gateway, args.duration, args.connections)
        print(f"Throughput ({tool}, {args.connections} connections, {args.duration:.0f} s each):")
        print(f"  bare aiohttp handler : {bare_rps:9.0f} req/s")
        print(f"  gateway L1 hits      : {hit_rps:9.0f} req/s   ({hit_rps / bare_rps:.2f}x of bare)")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if redis is not None:
            redis.stop()


async def stage_means(metrics_url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(metrics_url) as response:
        text = await response.text()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        for suffix, into in (("_sum", sums), ("_count", counts)):
            prefix = f"reflex_gateway_lookup_seconds{suffix}{{stage=\""
            if line.startswith(prefix):
                stage = line[len(prefix):].split('"')[0]
                into[stage] = float(line.rsplit(" ", 1)[1])
    return ", ".join(f"{stage} {1000 * sums[stage] / counts[stage]:.2f} ms" for stage in sums if counts.get(stage))


async def run_semantic(args: argparse.Namespace) -> None:
    """L3-verified hits and misses through `reflex serve` (real MiniLM embedder, real verifier
    gRPC service, Qdrant Edge), against the fake upstream called directly.

    The shipped verifier runs with the threshold set to 0, so that every lookup with a
    candidate takes the full L3 path (the verifier's work is the same whatever it answers):
    this measures latency only, never hit quality (that is `reflex eval`'s job).
    """
    from services.verifier.cross_encoder import default_model_path as shipped_verifier

    upstream_port, gateway_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        verifier_dir = shipped_verifier()
        try:
            procs.append(spawn([sys.executable, "-m", "tests.support.fake_upstream", "--port", str(upstream_port)]))
            procs.append(spawn(
                [sys.executable, "-c", "import sys; from commands.cli import main; sys.exit(main(['serve']))"],
                {
                    "REFLEX_PORT": str(gateway_port),
                    "REFLEX_UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}/v1",
                    "REFLEX_STORAGE_PATH": str(Path(tmp) / "data"),
                    "REFLEX_RERANKER_PATH": str(verifier_dir),
                    "REFLEX_RERANKER_THRESHOLD": "0",
                    "REFLEX_L2_MIN_SIMILARITY": "-1",
                    "REFLEX_LOG_LEVEL": "WARNING",
                },
            ))
            upstream = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
            gateway = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
            await wait_up(f"http://127.0.0.1:{upstream_port}/v1/models")
            await wait_up(f"http://127.0.0.1:{gateway_port}/ready", timeout=300)
            n, warm = args.requests, 10

            def question(i: int) -> Request:
                text = f"How do I sort a list of {i} numbers in Python?"
                return dict(BODY, messages=[{"role": "user", "content": text}]), {**HEADERS, "X-Reflex-Cache": "refresh"}

            def paraphrase(i: int) -> Request:
                text = f"What is the way to sort {i} numbers in a Python list?"
                return dict(BODY, messages=[{"role": "user", "content": text}]), HEADERS

            def lonely_miss(i: int) -> Request:
                # a tenant of its own: L2 has no candidate, so the miss pays embed + search only
                body, headers = new_question(i)
                return body, {**headers, "Authorization": f"Bearer sk-bench-{time.time_ns()}"}

            await latencies(gateway, n + warm, question, "bypass", warmup=0)  # store the questions
            await asyncio.sleep(2.0)  # their background writes (embed + upsert) finish
            l3 = await latencies(gateway, n, paraphrase, "hit-l3-verified", warmup=warm)
            miss = await latencies(gateway, n, lonely_miss, "miss", warmup=warm)
            direct = await latencies(upstream, n, new_question, None, warmup=warm)
            p50 = percentile(direct, 50)
            print(f"Semantic tiers via `reflex serve` (MiniLM embedder, verifier {verifier_dir.name}, Qdrant Edge); "
                  f"{n} sequential requests per series")
            print(f"  fake upstream direct   : {fmt(direct)}")
            print(f"  gateway, L3-verified hit: {fmt(l3)}   ({percentile(l3, 50) / p50:.1f}x of direct, "
                  f"added p50 {percentile(l3, 50) - p50:+.2f} ms)")
            print(f"  gateway, miss (no cand.): {fmt(miss)}   ({percentile(miss, 50) / p50:.1f}x of direct, "
                  f"added p50 {percentile(miss, 50) - p50:+.2f} ms)")
            print("  mean time per lookup stage (gateway /metrics, all series): " + await stage_means(
                f"http://127.0.0.1:{gateway_port}/metrics"))
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="sequential requests per latency series")
    parser.add_argument("--duration", type=int, default=5, help="seconds of load per throughput run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--redis", action="store_true", help="use a throwaway redis-server as L1")
    parser.add_argument("--semantic", action="store_true", help="measure L3-verified hits and misses via `reflex serve`")
    args = parser.parse_args()
    asyncio.run(run_semantic(args) if args.semantic else run(args))


if __name__ == "__main__":
    main()
