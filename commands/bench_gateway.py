"""``reflex bench``'s gateway sections: L1 hits, and the semantic path through ``reflex serve``.

Every server runs in a process of its own (the baselines of commands.bench_servers, the
gateway, ``reflex serve``), so none shares a GIL with this client or the load generator.

* **L1** (``reflex gateway``, semantic off): sequential requests over one keep-alive
  connection, the fake upstream called directly against the same request answered as an L1 hit
  and as a miss (a new question each time), taking turns so load drift hits all alike; then the
  L1-hit throughput against a bare aiohttp handler, both driven by ``wrk`` when it is installed,
  else by an aiohttp load loop in a process of its own.
* **Semantic** (``reflex serve`` with its real embedder, verifier and Qdrant Edge): a tenant
  stores a few questions, then, taking turns: the fake upstream called directly, an L3-verified
  hit (a reworded stored question), a miss with no candidate in that populated scope, a miss
  that had candidates to verify (the same how-to in a language none of the stored questions
  names: its stored siblings pass the default cosine floor, and the verifier must run and say
  no, as for most misses in a populated cache), and a miss in a new context (a tenant of its
  own, so an empty scope). Each round starts when the gateway has no cache write pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from commands.bench_common import (
    Figure,
    Progress,
    free_port,
    percentile,
    stop_all,
    wait_up,
)
from commands.bench_servers import CUT_SHORT, RedisProcess, spawn_server

BODY = {"model": "bench-model", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
HEADERS = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json", "X-Reflex-Format": "raw"}

_L1_LABELS = {"memory": "in-process L1", "redis": "Redis L1", "redis_direct": "Redis L1, no near cache"}

# Variables a developer's shell may hold that would point the bench's servers at real
# deployments, or change what is measured; each server gets its own values instead.
_ISOLATE = ("REFLEX_REDIS_URL", "REFLEX_QDRANT_URL", "REFLEX_EMBEDDER_URL", "REFLEX_VERIFIER_URL", "REFLEX_PORT",
            "REFLEX_UPSTREAM_URL", "REFLEX_UPSTREAM_API_KEY", "REFLEX_MOCK_PROVIDER", "REFLEX_STORAGE_PATH")

# The load loop used when wrk is not installed: a process of its own, counting 200s.
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

Request = tuple[dict[str, Any], dict[str, str]]  # (JSON body, headers)


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATE}
    env.setdefault("REFLEX_LOG_LEVEL", "WARNING")
    return env | values


def _spawn_reflex(command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "commands.cli", command], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _question(text: str, headers: dict[str, str] | None = None) -> Request:
    return {**BODY, "messages": [{"role": "user", "content": text}]}, {**HEADERS, **(headers or {})}


async def _one(session: Any, url: str, request: Request) -> tuple[float, str]:
    import orjson

    body, headers = request
    data = orjson.dumps(body)
    started = time.perf_counter()
    async with session.post(url, data=data, headers=headers) as response:
        await response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
        return elapsed * 1000.0, response.headers.get("X-Reflex-Status", "")


async def interleaved(series: dict[str, tuple[str, Callable[[int], Request]]], n: int, warmup: int,
                      pause: float = 0.0, settle: Callable[[], Awaitable[None]] | None = None,
                      ) -> dict[str, list[tuple[float, str]]]:
    """(ms, X-Reflex-Status) of ``n`` requests per series, the series taking turns, each on its
    own keep-alive connection; the first ``warmup`` rounds are dropped. With ``pause``, every
    request waits that many seconds first (the machine idles before each one); ``settle`` is
    awaited, untimed, before each round."""
    import aiohttp

    out: dict[str, list[tuple[float, str]]] = {name: [] for name in series}
    sessions = {name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for name in series}
    try:
        for i in range(n + warmup):
            if settle is not None:
                await settle()
            for name, (url, make) in series.items():
                if pause:
                    await asyncio.sleep(pause)
                sample = await _one(sessions[name], url, make(i))
                if i >= warmup:
                    out[name].append(sample)
    finally:
        for session in sessions.values():
            await session.close()
    return out


def _check(samples: list[tuple[float, str]], status: str, what: str) -> list[float]:
    wrong = [s for _, s in samples if s != status]
    if wrong:
        raise RuntimeError(f"{what}: expected X-Reflex-Status {status}, got {sorted(set(wrong))}")
    return [ms for ms, _ in samples]


def cores_for_load() -> tuple[int, int] | None:
    """(the servers' core, the load generator's core) when there are two to give: pinned apart,
    the server under test and wrk never take turns on one core, and the throughput figures
    stop depending on how the scheduler happens to place them."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return (cores[0], cores[1]) if len(cores) >= 2 else None


def _pin(pid: int, core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(pid, {core})


def load(url: str, duration: float, connections: int, core: int | None = None) -> tuple[float, str]:
    """Requests/s of L1-style load on ``url`` (wrk when installed, else a Python loop), on
    ``core`` when given."""
    pin = (lambda: _pin(0, core)) if core is not None else None
    if shutil.which("wrk"):
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(BODY))}\n'
                         + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in HEADERS.items()))
        try:
            result = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
                                     "-s", script.name, url], capture_output=True, text=True, check=True,
                                    preexec_fn=pin)
        finally:
            os.unlink(script.name)
        if "Non-2xx" in result.stdout:
            raise RuntimeError("non-2xx responses under load:\n" + result.stdout)
        line = next(line for line in result.stdout.splitlines() if line.startswith("Requests/sec"))
        return float(line.split()[1]), "wrk"
    result = subprocess.run(
        [sys.executable, "-c", LOAD_LOOP, url, json.dumps(BODY), json.dumps(HEADERS), str(duration), str(connections)],
        capture_output=True, text=True, check=True, preexec_fn=pin,
    )
    data = json.loads(result.stdout)
    if data["errors"]:
        raise RuntimeError(f"{data['errors']} failed requests under load")
    return float(data["rps"]), "aiohttp load loop"


async def bench_l1(progress: Progress, *, requests: int, duration: float, connections: int, rounds: int,
                   redis: bool) -> list[Figure]:
    upstream_port, bare_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    redis_proc = RedisProcess(free_port()).start() if redis else None
    figures: list[Figure] = []
    try:
        procs.append(spawn_server("upstream", upstream_port))
        procs.append(spawn_server("bare", bare_port))
        upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
        gateways = {"memory": free_port()}
        if redis_proc is not None:
            # with each replica's near cache (the default), and every lookup a round trip
            gateways["redis"] = free_port()
            gateways["redis_direct"] = free_port()
        for l1, port in gateways.items():
            env = _env(REFLEX_PORT=str(port), REFLEX_UPSTREAM_URL=upstream_url, REFLEX_SEMANTIC="0",
                       REFLEX_MAX_INFLIGHT="4096")
            if l1 != "memory":
                assert redis_proc is not None
                env["REFLEX_REDIS_URL"] = redis_proc.url
                if l1 == "redis_direct":
                    env["REFLEX_L1_NEAR_CACHE_BYTES"] = "0"
            procs.append(_spawn_reflex("gateway", env))
        await wait_up(f"{upstream_url}/models", 30, procs[0])
        await wait_up(f"http://127.0.0.1:{bare_port}/healthz", 30, procs[1])
        for n, port in enumerate(gateways.values()):
            await wait_up(f"http://127.0.0.1:{port}/healthz", 60, procs[2 + n])
        pinned = cores_for_load()
        server_core, load_core = pinned if pinned is not None else (None, None)
        # every server (Redis too, and their threads) on one core, the load on the other
        for pid in [p.pid for p in procs] + ([redis_proc.pid()] if redis_proc is not None else []):
            for thread in os.listdir(f"/proc/{pid}/task") if pinned is not None else ():
                _pin(int(thread), server_core)
        direct_url = f"{upstream_url}/chat/completions"
        bare_url = f"http://127.0.0.1:{bare_port}/v1/chat/completions"
        for l1, port in gateways.items():
            suffix = "" if l1 == "memory" else f"_{l1}"
            label = _L1_LABELS[l1]
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            progress.step(f"L1 ({label}): {requests} sequential requests per series (direct / hit / miss)")
            fresh = time.time_ns()
            samples = await interleaved({
                "direct": (direct_url, lambda i, fresh=fresh: _question(f"direct question {fresh} {i}")),
                "hit": (url, lambda i: (BODY, HEADERS)),
                "miss": (url, lambda i, fresh=fresh: _question(f"new question {fresh} {i}")),
            }, requests, warmup=10)
            direct = [ms for ms, _ in samples["direct"]]
            hit = _check(samples["hit"], "hit-l1-exact", "L1 hit")
            miss = _check(samples["miss"], "miss", "L1 miss")
            base = percentile(direct, 50)
            common = {"baseline": "fake upstream called directly (p50)", "baseline_value": base, "unit": "ms",
                      "better": "lower", "section": "l1"}
            figures.append(Figure(f"l1_hit_latency{suffix}", what=f"L1 hit p50 ({label})", value=percentile(hit, 50),
                                  detail={"p99_ms": percentile(hit, 99), "baseline_p99_ms": percentile(direct, 99),
                                          "added_ms": percentile(hit, 50) - base, "requests": requests}, **common))
            figures.append(Figure(f"miss_latency{suffix}", what=f"miss p50, L1 only ({label})",
                                  value=percentile(miss, 50),
                                  detail={"p99_ms": percentile(miss, 99), "added_ms": percentile(miss, 50) - base,
                                          "requests": requests}, **common))
            # Bare and gateway take turns, one ratio per round: a ratio of runs back to back
            # suffers far less from a shared machine's drift than two separate averages.
            ratios, bare_rates, hit_rates, tool = [], [], [], ""
            for r in range(rounds):
                progress.step(f"L1 throughput ({label}), round {r + 1}/{rounds}: {duration:.0f} s bare, "
                              f"{duration:.0f} s gateway, {connections} connections")
                bare_rps, tool = await asyncio.to_thread(load, bare_url, duration, connections, load_core)
                hit_rps, tool = await asyncio.to_thread(load, url, duration, connections, load_core)
                bare_rates.append(bare_rps)
                hit_rates.append(hit_rps)
                ratios.append(hit_rps / bare_rps)
            best = sorted(range(rounds), key=lambda k: ratios[k])[rounds // 2]  # the median round
            figures.append(Figure(
                f"l1_hit_throughput{suffix}", section="l1", what=f"L1-hit throughput ({label})",
                value=hit_rates[best], unit="req/s", baseline="bare aiohttp handler", baseline_value=bare_rates[best],
                better="higher", detail={"load_generator": tool, "connections": connections, "seconds": duration,
                                         "round_ratios": ratios,
                                         "cores": {"servers": server_core, "load": load_core}},
            ))
    finally:
        stop_all(procs)
        if redis_proc is not None:
            redis_proc.stop()
    return figures


# Stored questions (coding how-tos, as agents ask them), and a rewording the shipped verifier
# scores far above its threshold ("..., please?"), so the L3 series measures verified hits. Each
# query is asked once: a repeated one would be answered by L1.
_VERBS = ("reverse", "sort", "copy", "merge", "flatten", "serialize", "parse", "validate")
_NOUNS = ("a list", "a dictionary", "a JSON file", "a CSV file", "a string", "a date", "a set", "a queue")
_LANGUAGES = ("Python", "Rust", "Go", "JavaScript")
# Languages no stored question names: their questions are near misses (see near_miss).
_OTHER_LANGUAGES = ("Kotlin", "Swift", "Ruby", "Haskell")


def stored_questions(n: int) -> list[str]:
    every = [f"How do I {verb} {noun} in {lang}?" for lang in _LANGUAGES for verb in _VERBS for noun in _NOUNS]
    if n > len(every):
        raise ValueError(f"at most {len(every)} stored questions")
    return every[:n]


def near_miss(i: int) -> str:
    """The i-th question that is close to stored ones (the same how-to) but asks about a language
    none of them names: L2 finds candidates, and only the verifier can tell it is a miss."""
    every = [f"How do I {verb} {noun} in {lang}?" for lang in _OTHER_LANGUAGES for verb in _VERBS for noun in _NOUNS]
    return every[i % len(every)]


def reworded(question: str) -> str:
    return question.rstrip("?") + ", please?"


# The semantic series run twice: back to back, as the model benchmarks measure, and with the
# machine idle for IDLE_PAUSE_S before every request, as an agent's requests arrive (seconds
# apart). Measured on this 2-core VM, one fp32 MiniLM forward took 2.0 ms back to back and
# 5.7-5.9 ms after any pause from 50 ms to 1 s (int8: 1.3 ms and 2.2-2.6 ms): the weights are
# no longer in the CPU's caches. 0.2 s is past that step, and keeps the idle series short.
IDLE_PAUSE_S = 0.2
# The idle series take a third of the requests (each costs IDLE_PAUSE_S per series).
IDLE_SHARE = 3
# (figure key, series, X-Reflex-Status, how far its lookups must go by the gateway's
# reflex_gateway_semantic_lookups_total outcome, what): the outcomes are checked after the run,
# so that a series never measures another path than it says.
_SEMANTIC_SERIES = (
    ("l3_hit_latency", "l3", "hit-l3-verified", "verified", "L3-verified hit p50 (`reflex serve`)"),
    ("miss_with_candidates_latency", "miss_candidates", "miss", "verified", "miss with candidates to verify p50"),
    ("miss_no_candidate_latency", "miss_none", "miss", "empty_scope", "miss in a new context (empty scope) p50"),
    ("miss_populated_no_candidate_latency", "miss_far", "miss", "no_candidate",
     "miss with no candidate in a populated scope p50"),
)


async def bench_semantic(progress: Progress, *, requests: int, start_timeout: float = 300.0) -> list[Figure]:
    upstream_port, serve_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    figures: list[Figure] = []
    import aiohttp

    async with contextlib.AsyncExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="reflex-bench-"))
        try:
            procs.append(spawn_server("upstream", upstream_port))
            upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
            procs.append(_spawn_reflex("serve", _env(
                REFLEX_PORT=str(serve_port), REFLEX_UPSTREAM_URL=upstream_url,
                REFLEX_STORAGE_PATH=str(Path(tmp) / "data"),
            )))
            progress.step("semantic: starting `reflex serve` (embedder, verifier, Qdrant Edge)")
            await wait_up(f"{upstream_url}/models", 30, procs[0])
            await wait_up(f"http://127.0.0.1:{serve_port}/ready", start_timeout, procs[1])
            url = f"http://127.0.0.1:{serve_port}/v1/chat/completions"
            tenant = {"Authorization": f"Bearer sk-bench-semantic-{time.time_ns()}"}
            warmup = 3
            idle_requests, idle_warmup = max(4, requests // IDLE_SHARE), 1
            # Every query is asked once (a repeat is an L1 hit): the idle series take the
            # stored questions and near misses after the back-to-back ones.
            offset = requests + warmup
            questions = stored_questions(max(20, offset + idle_requests + idle_warmup + 1))
            progress.step(f"semantic: storing {len(questions)} questions")
            stored = await interleaved({"store": (url, lambda i: _question(
                questions[i], {**tenant, "X-Reflex-Cache": "refresh"}))}, len(questions), warmup=0)
            _check(stored["store"], "bypass", "storing")
            await _wait_stored(url, tenant, questions[-1])
            runs: dict[str, dict[str, list[tuple[float, str]]]] = {}
            metrics = aiohttp.ClientSession()
            stack.push_async_callback(metrics.close)
            before = await _semantic_outcomes(metrics, serve_port)
            for run, first, n, run_warmup, pause in (("", 0, requests, warmup, 0.0),
                                                     ("_idle", offset, idle_requests, idle_warmup, IDLE_PAUSE_S)):
                progress.step(f"semantic: {n} requests per series (direct / L3 hit / miss in a populated scope / "
                              "miss with candidates / miss in a new context)" + (f", each after {IDLE_PAUSE_S:g} s idle" if pause else ", back to back"))
                fresh = time.time_ns()
                runs[run] = await interleaved({
                    "direct": (f"{upstream_url}/chat/completions", lambda i, fresh=fresh: _question(f"direct {fresh} {i}")),
                    "l3": (url, lambda i, first=first: _question(reworded(questions[first + i]), tenant)),
                    # the stored questions' scope, a question far from all of them, and an
                    # answer cut short (never stored), so the scope stays as it is
                    "miss_far": (url, lambda i, fresh=fresh: _question(
                        f"new question {fresh} {i} {CUT_SHORT}", tenant)),
                    # its answer is stored after the response (its embedding is in by then)
                    "miss_candidates": (url, lambda i, first=first: _question(near_miss(first + i), tenant)),
                    # last in the round: its answer's store waits for the embedding it did not
                    # wait for, and the next round starts once that is done (quiet)
                    "miss_none": (url, lambda i, fresh=fresh: _question(
                        f"new question {fresh} {i}", {"Authorization": f"Bearer sk-bench-alone-{fresh}-{i}"})),
                }, n, warmup=run_warmup, pause=pause,
                    settle=functools.partial(_until_no_pending_writes, metrics, serve_port))
            after = await _semantic_outcomes(metrics, serve_port)
            wanted: dict[str, float] = {}
            for _, series, _, outcome, _ in _SEMANTIC_SERIES:  # warmup requests look up too
                wanted[outcome] = wanted.get(outcome, 0) + len(runs[""][series]) + warmup \
                    + len(runs["_idle"][series]) + idle_warmup
            made = {o: after.get(o, 0) - before.get(o, 0) for o in wanted}
            if made != wanted:
                raise RuntimeError(f"the semantic series took other paths than they say: lookups by outcome {made}, "
                                   f"expected {wanted}")
        finally:
            stop_all(procs)
    for run, samples in runs.items():
        direct = [ms for ms, _ in samples["direct"]]
        base = percentile(direct, 50)
        after = f", after {IDLE_PAUSE_S:g} s idle" if run else ""
        common = {"section": "semantic", "unit": "ms", "better": "lower", "baseline_value": base,
                  "baseline": "fake upstream called directly (p50)" + (f", also after {IDLE_PAUSE_S:g} s idle" if run else "")}
        for key, series, status, _, what in _SEMANTIC_SERIES:
            ms = _check(samples[series], status, what + after)
            figures.append(Figure(key + run, what=what + after, value=percentile(ms, 50),
                                  detail={"p99_ms": percentile(ms, 99), "added_ms": percentile(ms, 50) - base,
                                          "requests": len(ms), "pause_s": IDLE_PAUSE_S if run else 0.0},
                                  **common))
    return figures


async def _gateway_samples(session: Any, port: int, family_name: str) -> list[Any]:
    """The samples of one metric family on the gateway's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    return [sample for family in text_string_to_metric_families(text) if family.name == family_name
            for sample in family.samples]


async def _semantic_outcomes(session: Any, port: int) -> dict[str, float]:
    """The gateway's semantic lookups so far, by outcome."""
    return {sample.labels["outcome"]: sample.value
            for sample in await _gateway_samples(session, port, "reflex_gateway_semantic_lookups")
            if sample.name.endswith("_total")}


async def _until_no_pending_writes(session: Any, port: int, timeout: float = 30.0) -> None:
    """Until the gateway has no cache write on its way (by its /metrics). A miss's answer is
    stored after its response, and in an empty scope that store waits for the question's
    embedding, which the lookup did not wait for. The fake upstream answers in half a
    millisecond, so the next request would queue behind that embedding, where an agent's next
    request comes seconds later (a real upstream takes that long): the semantic rounds start
    on a gateway with no background work, so that each series measures its own path only."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await _gateway_samples(session, port, "reflex_gateway_pending_cache_writes")
        if not samples:
            raise RuntimeError("the gateway's /metrics has no reflex_gateway_pending_cache_writes")
        pending = samples[0].value
        if pending == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway still had {pending:g} cache writes pending after {timeout:g} s")
        await asyncio.sleep(0.001)


async def _wait_stored(url: str, tenant: dict[str, str], last: str, timeout: float = 30.0) -> None:
    """Until the last stored question (one the series never asks) is an L3 hit when reworded:
    writes happen after the response is sent, so the store phase returns before they land."""
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            _, status = await _one(session, url, _question(reworded(last), tenant))
            if status == "hit-l3-verified":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"stored questions never became L3 hits (last status {status})")
            await asyncio.sleep(0.2)
