#!/usr/bin/env python3
"""What Reflex adds to a Claude Code request, measured against the fake upstream called
directly in the same run.

1. One real request body is captured from the Claude Code CLI (``.agents/``, `make agents`):
   ``claude -p`` runs once from a scratch git repository against the fake provider, and the
   body it recorded (about 77 KB, 24 tools, ``stream: true``) is the request replayed below.
   ``--body FILE`` replays a saved one instead (``--save-body FILE`` writes the captured one).
2. The fake upstream runs as its own process, and so does `reflex serve` (the gateway, the
   real MiniLM embedder, the shipped verifier, an embedded L2 shard: the shipped defaults)
   with REFLEX_ANTHROPIC_UPSTREAM_URL at it. Nothing shares a GIL with the client.
3. Series of sequential requests over one keep-alive connection (aiohttp), each read to the
   end of its SSE stream, as Claude Code reads it:
   - direct: the body sent to the fake upstream itself (the baseline);
   - exact hit: the same body through the gateway (X-Reflex-Status hit-l1-exact);
   - miss, new context: the git-status line of the system prompt changes on every request, so
     L2 has no candidate (L1, embedding, an empty L2 search, the upstream, the write-back);
   - miss, verified: a new question in the same context each time, so the verifier scores
     the nearest stored questions and (nearly always) says no: the full L3 path. A request the
     verifier accepts is reported, not counted.
   Added latency = the series' p50 minus the direct p50 of the same kind of request.

    python scripts/bench_agents.py [--requests 100] [--body FILE] [--save-body FILE] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.fake_upstream import FakeUpstream
from tests.support.redis_server import free_port

CLAUDE = ROOT / ".agents" / "node_modules" / ".bin" / "claude"
PROMPT = "How do I center a div in CSS?"
KEY = "sk-ant-bench"
# headers Claude Code sends that reach the upstream (the gateway forwards these)
KEPT_HEADERS = ("anthropic-version", "anthropic-beta", "content-type")
VERBS = ["sort", "reverse", "parse", "merge", "flatten", "serialize", "validate", "compress", "encrypt", "profile"]
THINGS = ["a list", "a dict", "a CSV file", "a JSON document", "a date string", "a tree", "a socket", "an image"]
TOOLS = ["Python", "Rust", "Go", "Java", "Haskell", "Bash", "SQL", "C++", "Kotlin", "Elixir"]

Request = tuple[dict[str, Any], str]  # (body, the X-Reflex-Status expected, or "" for any)


def capture_body() -> tuple[dict[str, Any], dict[str, str]]:
    """Run `claude -p PROMPT` once against an in-process fake provider; return what it sent."""
    if not CLAUDE.is_file():
        sys.exit(f"{CLAUDE} is missing: run `make agents`, or pass --body FILE")
    fake = FakeUpstream(chunk_delay=0.0).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            home, repo = Path(tmp) / "home", Path(tmp) / "project"
            home.mkdir()
            repo.mkdir()
            (home / ".claude.json").write_text(json.dumps(
                {"hasCompletedOnboarding": True, "customApiKeyResponses": {"approved": [KEY[-20:]], "rejected": []}}))
            subprocess.run(["git", "init", "-q", str(repo)], check=True)
            (repo / "style.css").write_text(".box {\n  width: 10rem;\n}\n")
            subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
            subprocess.run(["git", "-C", str(repo), "-c", "user.name=Bench", "-c", "user.email=bench@reflex.invalid",
                            "commit", "-qm", "init"], check=True)
            closed = f"http://127.0.0.1:{free_port()}"
            env = {"PATH": os.environ["PATH"], "HOME": str(home), "ANTHROPIC_BASE_URL": fake.base_url,
                   "ANTHROPIC_API_KEY": KEY, "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                   "HTTPS_PROXY": closed, "HTTP_PROXY": closed, "NO_PROXY": "127.0.0.1,localhost"}
            subprocess.run([str(CLAUDE), "-p", PROMPT], cwd=repo, env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=180, check=True)
        (call,) = fake.calls_to("/v1/messages")
        assert call.body is not None
        return call.body, {k: v for k, v in call.headers.items() if k.lower() in KEPT_HEADERS}
    finally:
        fake.stop()


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REFLEX_")}
    return subprocess.Popen(args, cwd=ROOT, env={**clean, **env, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_up(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.2)


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def with_prompt(body: dict[str, Any], prompt: str) -> dict[str, Any]:
    """The body with the user's prompt (the last text block of the first user message) replaced."""
    out = json.loads(json.dumps(body))
    blocks = out["messages"][0]["content"]
    blocks[-1] = {**blocks[-1], "text": prompt}
    return out


def with_git_status(body: dict[str, Any], marker: str) -> dict[str, Any]:
    """The body with one more line in the system prompt's git status (a new context)."""
    out = json.loads(json.dumps(body))
    block = out["system"][-1]
    block["text"] = block["text"].replace("gitStatus:", f"gitStatus: ({marker})", 1) if "gitStatus:" in block["text"] \
        else block["text"] + f"\n{marker}"
    return out


def questions() -> Iterator[str]:
    for verb, thing, tool in itertools.product(VERBS, THINGS, TOOLS):
        yield f"How do I {verb} {thing} in {tool}?"


async def series(url: str, headers: dict[str, str], requests: list[Request], warmup: int
                 ) -> tuple[list[float], dict[str, int]]:
    """Latencies (ms, to the end of the stream) of the requests after ``warmup``, and the
    X-Reflex-Status counts of all of them."""
    out: list[float] = []
    statuses: dict[str, int] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for i, (body, expected) in enumerate(requests):
            data = json.dumps(body).encode()
            started = time.perf_counter()
            async with session.post(url, data=data, headers=headers) as response:
                text = await response.read()
                elapsed = (time.perf_counter() - started) * 1000
            if response.status != 200 or b"event: message_stop" not in text:
                raise RuntimeError(f"request {i}: {response.status} {text[:300]!r}")
            status = response.headers.get("X-Reflex-Status", "direct")
            statuses[status] = statuses.get(status, 0) + 1
            if i >= warmup and (not expected or status == expected):
                out.append(elapsed)
    return out, statuses


def row(name: str, values: list[float], base: float | None) -> dict[str, Any]:
    p50, p99 = percentile(values, 50), percentile(values, 99)
    result: dict[str, Any] = {"series": name, "n": len(values), "p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}
    if base is not None:
        result["added_p50_ms"] = round(p50 - base, 3)
    return result


async def measure(args: argparse.Namespace, body: dict[str, Any], caught: dict[str, str]) -> dict[str, Any]:
    upstream_port, gateway_port = free_port(), free_port()
    headers = {**caught, "x-api-key": KEY, "content-type": "application/json"}
    n, warm = args.requests, args.warmup
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            procs.append(spawn([sys.executable, "-m", "tests.support.fake_upstream", "--port", str(upstream_port)], {}))
            procs.append(spawn(
                [sys.executable, "-c", "import sys; from commands.cli import main; sys.exit(main(['serve']))"],
                {"REFLEX_PORT": str(gateway_port), "REFLEX_STORAGE_PATH": str(Path(tmp) / "data"),
                 "REFLEX_ANTHROPIC_UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}",
                 "REFLEX_UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}/v1", "REFLEX_LOG_LEVEL": "WARNING"},
            ))
            await wait_up(f"http://127.0.0.1:{upstream_port}/v1/models", 60)
            await wait_up(f"http://127.0.0.1:{gateway_port}/ready", 300)
            direct = f"http://127.0.0.1:{upstream_port}/v1/messages?beta=true"
            gateway = f"http://127.0.0.1:{gateway_port}/v1/messages?beta=true"

            same = [(body, "")] * (n + warm)
            asked = questions()
            fresh = [(with_prompt(body, next(asked)), "") for _ in range(n + warm)]
            direct_same, _ = await series(direct, headers, same, warm)
            direct_fresh, _ = await series(direct, headers, fresh, warm)

            # the first request is the miss that stores the answer; the rest are exact hits
            await series(gateway, headers, [(body, "miss")], 0)
            await asyncio.sleep(1.0)  # the write-back happens after the answer was sent
            hit, hit_statuses = await series(gateway, headers, [(body, "hit-l1-exact")] * (n + warm), warm)
            contexts = [(with_git_status(body, f"bench-{time.time_ns()}-{i}"), "miss") for i in range(n + warm)]
            new_context, context_statuses = await series(gateway, headers, contexts, warm)
            verified = [(with_prompt(body, next(asked)), "miss") for _ in range(n + warm)]
            miss, miss_statuses = await series(gateway, headers, verified, warm)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGINT)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    base_same, base_fresh = percentile(direct_same, 50), percentile(direct_fresh, 50)
    return {
        "body_bytes": len(json.dumps(body).encode()),
        "tools": len(body.get("tools") or []),
        "requests_per_series": n,
        "rows": [
            row("fake upstream direct (same body)", direct_same, None),
            row("fake upstream direct (new question each)", direct_fresh, None),
            row("gateway: exact hit (hit-l1-exact)", hit, base_same),
            row("gateway: miss, new context (no L2 candidate)", new_context, base_same),
            row("gateway: miss, same context (verifier scores, says no)", miss, base_fresh),
        ],
        "statuses": {"exact": hit_statuses, "new_context": context_statuses, "verified_miss": miss_statuses},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="measured requests per series")
    parser.add_argument("--warmup", type=int, default=10, help="requests per series not measured")
    parser.add_argument("--body", type=Path, help="replay this saved body (JSON) instead of capturing one")
    parser.add_argument("--save-body", type=Path, help="write the captured body (and headers) here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.body is not None:
        saved = json.loads(args.body.read_text())
        body, caught = saved["body"], saved["headers"]
    else:
        body, caught = capture_body()
        if args.save_body is not None:
            args.save_body.write_text(json.dumps({"body": body, "headers": caught}))
    result = asyncio.run(measure(args, body, caught))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"Claude Code request: {result['body_bytes'] / 1000:.1f} KB, {result['tools']} tools, stream: true; "
          f"{result['requests_per_series']} sequential requests per series, to the end of the SSE stream")
    for r in result["rows"]:
        added = f"   added p50 {r['added_p50_ms']:+8.3f} ms" if "added_p50_ms" in r else ""
        print(f"  {r['series']:<58} p50 {r['p50_ms']:8.3f} ms  p99 {r['p99_ms']:8.3f} ms{added}")
    print(f"  X-Reflex-Status seen: {result['statuses']}")


if __name__ == "__main__":
    main()
