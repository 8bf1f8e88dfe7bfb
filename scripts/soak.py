"""A soak of ``reflex serve``: minutes of mixed traffic on loopback, RSS every minute.

Not part of CI (it runs for ten minutes by default): run it before a release, or after a change
to the gateway's hot paths, as ``python scripts/soak.py`` (``--minutes 2`` for a short run).

What it starts, all on 127.0.0.1 and stopped when it ends:

- the fake upstream (``python -m tests.support.fake_upstream``) as a process of its own, the one
  fake of the test suite, speaking all three protocols (``--mock`` uses REFLEX_MOCK_PROVIDER=1
  instead);
- ``reflex serve`` as a user runs it: the gateway, the real embedder and verifier, and an
  embedded Qdrant Edge shard in a temporary folder.

The traffic, from ``--clients`` concurrent clients, each request drawn at random:

- **hits**: exact repeats of a small set of warm questions, over Chat Completions, Anthropic
  Messages and Responses, several tenants;
- **misses**: new questions (they go through the embedder, L2 and usually the verifier), and
  **paraphrases** of warm ones (a verified hit or a miss, whichever the verifier decides);
- **streams**: any of the above with ``stream: true``; some clients hang up after the first
  chunk;
- **bad input**: malformed JSON, a missing ``model``, wrong types, an unknown path;
- **slow clients**: a body sent in pieces over a second, and a stream read slowly.

Entries expire after ``--ttl`` seconds and L1 holds ``--l1-capacity`` entries, so after the first
minutes what is stored stops growing: from then on a growing RSS is a leak, not the cache
filling up.

It prints RSS (of the ``reflex serve`` process) once a minute, and at the end the counts per
kind and status, every unexpected status, and p50/p99 latency per kind. Exit status 1 when:

- RSS keeps growing after the warm-up (``--warmup-minutes``): a least-squares slope above
  ``--max-slope-mib`` MiB per minute *and* a total growth above ``--max-growth-mib`` over the
  samples after the warm-up; or
- any request got a 5xx, or a status its kind never expects (a hit or miss that is not 200,
  bad input that is not 4xx).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.redis_server import free_port  # noqa: E402  (after the path is set)

HOST = "127.0.0.1"
TENANTS = ("sk-soak-alice", "sk-soak-bob", "sk-soak-carol")
WARM = (
    "How do I center a div in CSS?",
    "How can I undo the last git commit but keep my changes?",
    "What is the difference between a list and a tuple in Python?",
    "How do I read a file line by line in Rust?",
    "What does the HTTP status 429 mean?",
    "How do I reverse a linked list?",
    "Explain what a race condition is.",
    "How do I make a POST request with curl?",
)
PARAPHRASES = (
    "How can I center a div using CSS?",
    "How do I undo my last git commit but keep the changes?",
    "What's the difference between a Python list and a tuple?",
    "How can I read a file line by line in Rust?",
    "What does HTTP status code 429 mean?",
    "How can I reverse a linked list?",
    "What is a race condition?",
    "How can I send a POST request using curl?",
)
SUBJECTS = ("a binary tree", "a hash map", "a TCP socket", "a B-tree index", "a mutex", "a bloom filter",
            "an LRU cache", "a git rebase", "a Docker volume", "a Kubernetes pod", "a SQL join", "a regex")
ASPECTS = ("What is", "How do I test", "How do I debug", "When should I avoid", "How do I implement",
           "What are common mistakes with", "How do I benchmark", "How do I document")
PROTOCOLS = ("chat", "messages", "responses")
ANTHROPIC_VERSION = "2023-06-01"
ADMIN_TOKEN = "soak-admin-token"  # loopback only: the stats endpoint reports what is stored


# ---------------------------------------------------------------------------- requests


def body_for(protocol: str, question: str, *, stream: bool) -> dict[str, Any]:
    if protocol == "chat":
        return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}], "stream": stream}
    if protocol == "messages":
        return {"model": "claude-sonnet-4-5", "max_tokens": 256,
                "messages": [{"role": "user", "content": question}], "stream": stream}
    return {"model": "gpt-4o-mini", "input": question, "store": False, "stream": stream}


def path_for(protocol: str) -> str:
    return {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}[protocol]


def headers_for(protocol: str, tenant: str) -> dict[str, str]:
    if protocol == "messages":
        return {"x-api-key": tenant, "anthropic-version": ANTHROPIC_VERSION}
    return {"Authorization": f"Bearer {tenant}"}


@dataclasses.dataclass
class Tally:
    """What the clients saw: counts per (kind, status), latencies per kind, unexpected replies."""

    counts: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)
    latencies: dict[str, list[float]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    unexpected: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)
    server_errors: int = 0
    cache_status: Counter[str] = dataclasses.field(default_factory=Counter)

    def record(self, kind: str, status: int | str, seconds: float, *, expected: bool, cache: str | None = None) -> None:
        self.counts[(kind, str(status))] += 1
        self.latencies[kind].append(seconds)
        if cache:
            self.cache_status[cache] += 1
        if isinstance(status, int) and status >= 500:
            self.server_errors += 1
        if not expected:
            self.unexpected[(kind, str(status))] += 1


class Traffic:
    """The clients: each loops until the deadline, drawing one request kind at a time."""

    # (kind, weight): the mix of one client's requests
    MIX = (("hit", 40), ("miss", 15), ("paraphrase", 5), ("stream", 15), ("stream_hangup", 3),
           ("bad_input", 12), ("slow_upload", 5), ("slow_reader", 5))

    def __init__(self, base: str, port: int, deadline: float, tally: Tally, seed: int) -> None:
        self.base, self.port, self.deadline, self.tally = base, port, deadline, tally
        self.rng = random.Random(seed)
        self.unique = 0

    def _question(self) -> str:
        self.unique += 1
        return (f"{self.rng.choice(ASPECTS)} {self.rng.choice(SUBJECTS)} in project "
                f"{self.rng.randrange(10**9)}-{self.unique}?")

    async def client(self, session: aiohttp.ClientSession, number: int) -> None:
        kinds, weights = zip(*self.MIX, strict=True)
        while time.monotonic() < self.deadline:
            kind = self.rng.choices(kinds, weights)[0]
            started = time.perf_counter()
            try:
                status, expected, cache = await getattr(self, kind)(session)
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError) as exc:
                status, expected, cache = type(exc).__name__, False, None
            self.tally.record(kind, status, time.perf_counter() - started, expected=expected, cache=cache)

    async def _send(self, session: aiohttp.ClientSession, protocol: str, question: str, *, stream: bool,
                    hang_up: bool = False, slow_read: bool = False) -> tuple[int, bool, str | None]:
        tenant = self.rng.choice(TENANTS)
        async with session.post(self.base + path_for(protocol), json=body_for(protocol, question, stream=stream),
                                headers=headers_for(protocol, tenant)) as response:
            cache = response.headers.get("X-Reflex-Status")
            if hang_up:
                await response.content.readany()
                response.close()  # the client leaves mid-answer
                return response.status, response.status == 200, cache
            if slow_read:
                while await response.content.read(256):
                    await asyncio.sleep(0.05)
            else:
                await response.read()
            return response.status, response.status == 200, cache

    async def hit(self, session: aiohttp.ClientSession) -> tuple[int, bool, str | None]:
        return await self._send(session, self.rng.choice(PROTOCOLS), self.rng.choice(WARM), stream=False)

    async def miss(self, session: aiohttp.ClientSession) -> tuple[int, bool, str | None]:
        return await self._send(session, self.rng.choice(PROTOCOLS), self._question(), stream=False)

    async def paraphrase(self, session: aiohttp.ClientSession) -> tuple[int, bool, str | None]:
        return await self._send(session, self.rng.choice(PROTOCOLS), self.rng.choice(PARAPHRASES), stream=False)

    async def stream(self, session: aiohttp.ClientSession) -> tuple[int, bool, str | None]:
        question = self.rng.choice(WARM) if self.rng.random() < 0.6 else self._question()
        return await self._send(session, self.rng.choice(PROTOCOLS), question, stream=True)

    async def stream_hangup(self, session: aiohttp.ClientSession) -> tuple[int, bool, str | None]:
        return await self._send(session, self.rng.choice(PROTOCOLS), self._question(), stream=True, hang_up=True)

    async def slow_reader(self, session: aiohttp.ClientSession) -> tuple[int, bool, str | None]:
        question = self.rng.choice(WARM) if self.rng.random() < 0.5 else self._question()
        return await self._send(session, self.rng.choice(PROTOCOLS), question, stream=True, slow_read=True)

    async def bad_input(self, session: aiohttp.ClientSession) -> tuple[int, bool, str | None]:
        protocol = self.rng.choice(PROTOCOLS)
        good = body_for(protocol, "x", stream=False)
        choice = self.rng.randrange(5)
        if choice == 0:
            data = b'{"model": "m", "messages": ['
        elif choice == 1:
            data = orjson.dumps({k: v for k, v in good.items() if k != "model"})
        elif choice == 2:
            data = orjson.dumps({**good, "stream": "yes"})
        elif choice == 3:
            data = b"\xff\xfe not utf-8"
        else:
            async with session.get(self.base + "/v1/no/such/path") as response:
                await response.read()
                return response.status, response.status == 404, None
        async with session.post(self.base + path_for(protocol), data=data,
                                headers={"Content-Type": "application/json",
                                         **headers_for(protocol, self.rng.choice(TENANTS))}) as response:
            await response.read()
            return response.status, 400 <= response.status < 500, None

    async def slow_upload(self, session: aiohttp.ClientSession) -> tuple[int, bool, str | None]:
        """A body in four pieces, 0.25 s apart: slow, but well inside the body-read timeout."""
        protocol = self.rng.choice(PROTOCOLS)
        body = orjson.dumps(body_for(protocol, self.rng.choice(WARM + PARAPHRASES), stream=False))
        head = (f"POST {path_for(protocol)} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers_for(protocol, self.rng.choice(TENANTS)).items())
                + "\r\n").encode()
        reader, writer = await asyncio.open_connection(HOST, self.port)
        try:
            writer.write(head)
            step = max(1, len(body) // 4)
            for start in range(0, len(body), step):
                writer.write(body[start:start + step])
                await writer.drain()
                await asyncio.sleep(0.25)
            reply = await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()
        status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
        return status, status == 200, None


# ---------------------------------------------------------------------------- processes


def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    time.sleep(0.5)
                    if process.poll() is not None:  # another process answered on its port
                        raise SystemExit(f"{url}: the process exited:\n{log.read_text()[-4000:]}")
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise SystemExit(f"{url} not ready after {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def start_processes(args: argparse.Namespace, work: Path) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes] | None, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFLEX_")}
    env["PYTHONPATH"] = str(ROOT)
    upstream = None
    gateway_port = free_port()
    serve_env = {
        **env,
        "REFLEX_PORT": str(gateway_port),
        "REFLEX_STORAGE_PATH": str(work / "data"),
        "REFLEX_CACHE_TTL_SECS": str(args.ttl),
        "REFLEX_L2_PURGE_INTERVAL_SECS": str(max(1, args.ttl // 2)),
        "REFLEX_L1_CAPACITY": str(args.l1_capacity),
        "REFLEX_RESPONSE_FORMAT": "auto",
        "REFLEX_LOG_LEVEL": "WARNING",
        "REFLEX_ADMIN_TOKEN": ADMIN_TOKEN,
        # the soak shares its machine with the clients: a slow model call is a miss, not an error
        "REFLEX_EMBEDDER_TIMEOUT_MS": "2000",
        "REFLEX_VERIFIER_TIMEOUT_MS": "2000",
    }
    if args.exact_only:
        serve_env["REFLEX_SEMANTIC"] = "0"
    # Never the default upstream (a public provider): the mock, or the fake upstream on loopback.
    serve_env["REFLEX_UPSTREAM_URL"] = serve_env["REFLEX_ANTHROPIC_UPSTREAM_URL"] = f"http://{HOST}:9"
    if args.mock:
        serve_env["REFLEX_MOCK_PROVIDER"] = "1"
    else:
        upstream_port = free_port()
        upstream_log = (work / "upstream.log").open("wb")
        upstream = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fake_upstream", "--port", str(upstream_port),
             "--chunk-delay", "0.002"],
            cwd=ROOT, env=env, stdout=upstream_log, stderr=subprocess.STDOUT,
        )
        wait_ready(f"http://{HOST}:{upstream_port}/v1/models", upstream, work / "upstream.log", 60)
        serve_env["REFLEX_UPSTREAM_URL"] = f"http://{HOST}:{upstream_port}/v1"
        serve_env["REFLEX_ANTHROPIC_UPSTREAM_URL"] = f"http://{HOST}:{upstream_port}"
    serve_log = (work / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-c", "import sys; from commands.cli import main; sys.exit(main(['serve']))"],
        cwd=ROOT, env=serve_env, stdout=serve_log, stderr=subprocess.STDOUT,
    )
    wait_ready(f"http://{HOST}:{gateway_port}/ready", serve, work / "serve.log", 300)
    return serve, upstream, gateway_port


def stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGINT) -> int | None:
    if process is None or process.poll() is not None:
        return None if process is None else process.returncode
    process.send_signal(sig)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(10)


# ---------------------------------------------------------------------------- the run


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, MiB) samples."""
    if len(samples) < 2:
        return 0.0
    xs, ys = [s[0] for s in samples], [s[1] for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


async def drive(args: argparse.Namespace, port: int, pid: int) -> tuple[Tally, list[tuple[float, float]]]:
    tally = Tally()
    base = f"http://{HOST}:{port}"
    started = time.monotonic()
    deadline = started + args.minutes * 60
    traffic = [Traffic(base, port, deadline, tally, seed=args.seed + i) for i in range(args.clients)]
    samples: list[tuple[float, float]] = [(0.0, rss_mib(pid))]
    print(f"minute  0.0: RSS {samples[0][1]:7.1f} MiB (start)", flush=True)

    async def sample() -> None:
        minute = 1
        while started + minute * 60 <= deadline + 1:
            wait = started + minute * 60 - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            rss = rss_mib(pid)
            samples.append((float(minute), rss))
            done = sum(tally.counts.values())
            l1, l2 = await stored_entries(session, base)
            print(f"minute {minute:4.1f}: RSS {rss:7.1f} MiB, {done} requests, "
                  f"{tally.server_errors} 5xx, {sum(tally.unexpected.values())} unexpected, "
                  f"live entries L1 {l1} L2 {l2}", flush=True)
            minute += 1

    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=args.clients * 2 + 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        # the warm questions go in first, once per protocol and tenant, so "hits" mostly hit
        for protocol in PROTOCOLS:
            for tenant in TENANTS:
                for question in WARM:
                    async with session.post(base + path_for(protocol), json=body_for(protocol, question, stream=False),
                                            headers=headers_for(protocol, tenant)) as response:
                        await response.read()
        sampler = asyncio.ensure_future(sample())
        await asyncio.gather(*(t.client(session, i) for i, t in enumerate(traffic)))
        await sampler
    return tally, samples


async def stored_entries(session: aiohttp.ClientSession, base: str) -> tuple[int, int]:
    """Live entries in L1 and L2 over all tenants (the admin stats endpoint), to tell a cache
    that is still filling up from memory that grows while what is stored does not."""
    async with session.get(base + "/admin/v1/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as response:
        tenants = (await response.json())["tenants"]
    return (sum(t["entries"]["l1"] for t in tenants.values()), sum(t["entries"]["l2"] for t in tenants.values()))


def report(tally: Tally, samples: list[tuple[float, float]], args: argparse.Namespace) -> int:
    total = sum(tally.counts.values())
    print(f"\n{total} requests from {args.clients} clients in {args.minutes:g} min")
    print("counts (kind, status):")
    for (kind, status), n in sorted(tally.counts.items()):
        print(f"  {kind:14s} {status:>20s} {n:7d}")
    print("cache status of the answers:", dict(sorted(tally.cache_status.items())))
    every = [s for values in tally.latencies.values() for s in values]
    print(f"latency, all: p50 {percentile(every, 0.5) * 1000:.1f} ms, p99 {percentile(every, 0.99) * 1000:.1f} ms")
    # the slow clients are slow on purpose (a body over a second, a stream read slowly)
    prompt = [s for kind, values in tally.latencies.items() if not kind.startswith("slow_") for s in values]
    print(f"latency, without the slow clients: p50 {percentile(prompt, 0.5) * 1000:.1f} ms, "
          f"p99 {percentile(prompt, 0.99) * 1000:.1f} ms")
    for kind, values in sorted(tally.latencies.items()):
        print(f"  {kind:14s} p50 {percentile(values, 0.5) * 1000:8.1f} ms  p99 {percentile(values, 0.99) * 1000:8.1f} ms"
              f"  (n={len(values)})")
    print("RSS per minute (MiB):", ", ".join(f"{m:g}: {r:.1f}" for m, r in samples))
    failed = False
    after = [s for s in samples if s[0] >= args.warmup_minutes]
    if len(after) >= 3:
        slope = slope_per_minute(after)
        growth = after[-1][1] - after[0][1]
        print(f"after minute {args.warmup_minutes:g}: slope {slope:+.2f} MiB/min, growth {growth:+.1f} MiB")
        if slope > args.max_slope_mib and growth > args.max_growth_mib:
            print(f"FAIL: RSS keeps growing (slope > {args.max_slope_mib} MiB/min and growth > "
                  f"{args.max_growth_mib} MiB)")
            failed = True
    else:
        print("(too short to judge RSS growth: fewer than 3 samples after the warm-up)")
    if tally.server_errors:
        print(f"FAIL: {tally.server_errors} responses with a 5xx status")
        failed = True
    if tally.unexpected:
        print("FAIL: unexpected statuses:", dict(tally.unexpected))
        failed = True
    print("FAILED" if failed else "PASSED")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the traffic runs (default 10)")
    parser.add_argument("--clients", type=int, default=6, help="concurrent clients (default 6)")
    parser.add_argument("--warmup-minutes", type=float, default=3.0,
                        help="RSS samples before this minute are not judged (default 3)")
    parser.add_argument("--max-slope-mib", type=float, default=2.0, help="MiB per minute (default 2)")
    parser.add_argument("--max-growth-mib", type=float, default=24.0, help="MiB after the warm-up (default 24)")
    parser.add_argument("--ttl", type=int, default=90, help="REFLEX_CACHE_TTL_SECS of the soak (default 90)")
    parser.add_argument("--l1-capacity", type=int, default=2000, help="REFLEX_L1_CAPACITY (default 2000)")
    parser.add_argument("--mock", action="store_true", help="REFLEX_MOCK_PROVIDER=1 instead of the fake upstream")
    parser.add_argument("--exact-only", action="store_true",
                        help="REFLEX_SEMANTIC=0: no embedder, verifier or L2 (to tell their memory from the gateway's)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reflex-soak-") as tmp:
        work = Path(tmp)
        serve, upstream, port = start_processes(args, work)
        try:
            print(f"reflex serve (pid {serve.pid}) on {HOST}:{port}; {args.clients} clients for {args.minutes:g} min",
                  flush=True)
            tally, samples = asyncio.run(drive(args, port, serve.pid))
        finally:
            code = stop(serve)
            stop(upstream, signal.SIGTERM)
        log = (work / "serve.log").read_text(errors="replace")
        tracebacks = log.count("Traceback")
        print(f"reflex serve exited {code}; {tracebacks} tracebacks in its log")
        if tracebacks or tally.server_errors:
            print("--- reflex serve's log (end) ---\n" + log[-6000:])
            if (work / "upstream.log").exists():
                print("--- the fake upstream's log (end) ---\n" + (work / "upstream.log").read_text(errors="replace")[-3000:])
        result = report(tally, samples, args)
        if code not in (0, None) or tracebacks:
            print("FAIL: reflex serve did not exit cleanly or logged tracebacks")
            result = 1
        return result


if __name__ == "__main__":
    sys.exit(main())
