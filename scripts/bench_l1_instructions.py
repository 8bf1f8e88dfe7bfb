"""CPU instructions per L1 hit, against a bare aiohttp handler: the L1-hit throughput ratio
without the noise of a shared machine.

``reflex bench`` measures L1-hit throughput with wrk, as a user would; on a shared 2-core VM
its rounds spread by +-25%. This counts the instructions each server executes per request
under valgrind's callgrind (deterministic to a fraction of a percent), for the bare handler of
``reflex bench`` and for ``reflex gateway`` answering the same request from L1, both under the
same concurrent load (32 keep-alive connections by default, as the bench's wrk). Throughput
on one core is inversely proportional to instructions per request when neither server waits
on anything, so ``bare / gateway`` is the throughput ratio the bench estimates.

    python scripts/bench_l1_instructions.py [--requests 640] [--connections 32] [--redis [--no-near-cache]]

Needs valgrind (Debian: ``apt-get install valgrind``); each server starts 50x slower under it
(about a minute each), and the counters are zeroed after a warm-up, so start-up is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BODY = b'{"model": "bench-model", "messages": [{"role": "user", "content": "What is the capital of France?"}]}'
REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-bench\r\n"
           b"Content-Type: application/json\r\nX-Reflex-Format: raw\r\nContent-Length: "
           + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


async def drive(port: int, requests: int, connections: int) -> dict[str, int]:
    """``requests`` POSTs over ``connections`` keep-alive connections; counts by X-Reflex-Status."""
    statuses: dict[str, int] = {}

    async def worker(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(n):
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            status = next((line.split(b":", 1)[1].strip().decode() for line in lines
                           if line.lower().startswith(b"x-reflex-status")), lines[0].decode())
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    await asyncio.gather(*(worker(requests // connections) for _ in range(connections)))
    return statuses


def wait_up(port: int, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"nothing answered on port {port}")


def instructions(command: list[str], env: dict[str, str], port: int, requests: int, connections: int) -> float:
    with tempfile.TemporaryDirectory(prefix="reflex-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
                                 *command], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_up(port)
            asyncio.run(drive(port, 64, 1))  # warm-up: the first request stores the entry
            time.sleep(1.0)
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
            statuses = asyncio.run(drive(port, requests, connections))
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
            time.sleep(1.0)
        finally:
            proc.terminate()
            proc.wait(60)
        if set(statuses) - {"HTTP/1.1 200 OK", "hit-l1-exact"}:
            raise RuntimeError(f"unexpected answers: {statuses}")
        dumps = sorted(Path(tmp).glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
        summary = next(line for line in dumps[-1].read_text().splitlines() if line.startswith("summary:"))
        return int(summary.split()[1]) / (requests // connections * connections)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--redis", action="store_true", help="the gateway with a Redis L1 (redis-server on PATH)")
    parser.add_argument("--no-near-cache", action="store_true",
                        help="with --redis: every lookup goes to Redis (REFLEX_L1_NEAR_CACHE_BYTES=0)")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from commands.bench_common import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("REFLEX_")}
    bare_port, gateway_port = free_port(), free_port()
    bare = instructions([sys.executable, "-m", "commands.bench_servers", "bare", "--port", str(bare_port)],
                        env, bare_port, args.requests, args.connections)
    gateway_env = env | {"REFLEX_PORT": str(gateway_port), "REFLEX_SEMANTIC": "0", "REFLEX_MOCK_PROVIDER": "1",
                         "REFLEX_LOG_LEVEL": "WARNING", "REFLEX_MAX_INFLIGHT": "4096",
                         # valgrind runs the gateway 50x slower: Redis replies must not time out
                         "REFLEX_REDIS_TIMEOUT_MS": "10000"}
    redis = None
    if args.redis:
        redis_port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL)
        gateway_env["REFLEX_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        if args.no_near_cache:
            gateway_env["REFLEX_L1_NEAR_CACHE_BYTES"] = "0"
    try:
        gateway = instructions([sys.executable, "-m", "commands.cli", "gateway"], gateway_env, gateway_port,
                               args.requests, args.connections)
    finally:
        if redis is not None:
            redis.terminate()
    l1 = "Redis" if args.redis else "in-process"
    print(f"instructions per request, {args.connections} connections: bare aiohttp {bare:,.0f}; "
          f"gateway ({l1} L1 hit) {gateway:,.0f}; ratio {bare / gateway:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
