"""`reflex up` as a user runs it: a real `reflex up` process starting 2 embedder and 1 verifier
replica processes (real models) and a gateway process, against a real Redis, on loopback. The
only fake is the provider (REFLEX_MOCK_PROVIDER answers misses locally).

What the issue asks the topology to show:
- the gateway spreads calls over all replicas (each replica's own /metrics counts its calls);
- killing a replica under load loses nothing beyond the calls in flight to it, and those fall
  back to a miss: every HTTP response is still a 200;
- the restarted replica gets calls again, from the same gateway process;
- SIGTERM stops every process cleanly.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.support.models import verifier_model_dir
from tests.support.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]
# Clients sending at once: enough to have several calls in flight when a replica dies, few
# enough to leave the 2 shared cores to the model processes.
CONCURRENCY = 4
STARTUP_TIMEOUT_S = 240.0


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    layout_file: Path
    log_file: Path

    def layout(self) -> dict[str, Any]:
        return json.loads(self.layout_file.read_text())

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def wait_for(self, what: str, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = STARTUP_TIMEOUT_S) -> dict[str, Any]:
        """Poll the layout file until predicate holds; bounded, and fails fast if `reflex up` exits."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"reflex up exited ({self.process.returncode}):\n{self.log_tail()}"
            if self.layout_file.exists():
                layout = self.layout()
                if predicate(layout):
                    return layout
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log_tail()}")


@pytest.fixture(scope="module")
def redis_for_up() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, redis_for_up: RedisServer) -> Iterator[Up]:
    tmp = tmp_path_factory.mktemp("reflex-up")
    env = {
        **os.environ,
        "REFLEX_MOCK_PROVIDER": "1",
        "REFLEX_REDIS_URL": redis_for_up.url,
        "REFLEX_STORAGE_PATH": str(tmp / "l2"),
        "REFLEX_RERANKER_PATH": str(verifier_model_dir(tmp)),
        # One torch thread per model process: three of them share two cores with the test.
        "REFLEX_TORCH_THREADS": "1",
        "REFLEX_SHUTDOWN_GRACE_SECS": "5",
        "REFLEX_SHUTDOWN_GRACE_SECS_GRPC": "2",
        "HF_HUB_OFFLINE": "1",
    }
    layout_file, log_file = tmp / "layout.json", tmp / "reflex-up.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "commands.cli", "up", "--embedders", "2", "--verifiers", "1",
             "--port", "0", "--layout-file", str(layout_file)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    handle = Up(process, layout_file, log_file)
    try:
        handle.wait_for("every process healthy", lambda layout: layout["ready"])
        yield handle
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ------------------------------------------------------------------ helpers


async def replica_sample(session: aiohttp.ClientSession, replica: dict[str, Any],
                         matches: Callable[[Any], bool]) -> float:
    """The first sample of a replica's own /metrics that ``matches``, or 0."""
    async with session.get(replica["metrics_url"]) as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if matches(sample):
                return sample.value
    return 0.0


async def replica_calls(session: aiohttp.ClientSession, replica: dict[str, Any], method: str) -> float:
    """RPCs a replica received (reflex_<service>_requests_total)."""
    return await replica_sample(
        session, replica, lambda s: s.name.endswith("_requests_total") and s.labels.get("method") == method)


async def replica_texts(session: aiohttp.ClientSession, replica: dict[str, Any]) -> float:
    """Texts an embedder replica ran through its model (reflex_embedder_batch_size_sum): the
    gateway's lookups share Embed calls under load (REFLEX_EMBEDDER_COALESCE_MAX), so RPCs
    count fewer than the lookups they carry."""
    return await replica_sample(session, replica, lambda s: s.name == "reflex_embedder_batch_size_sum")


async def embedder_failures(session: aiohttp.ClientSession, gateway_url: str) -> float:
    async with session.get(gateway_url + "/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "reflex_gateway_tier_failures_total" and sample.labels.get("component") == "embedder":
                total += sample.value
    return total


async def chat(session: aiohttp.ClientSession, gateway_url: str, question: str) -> tuple[int, str | None]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}
    async with session.post(
        gateway_url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-topology-test"}
    ) as resp:
        await resp.read()
        return resp.status, resp.headers.get("X-Reflex-Status")


def fresh_question(topic: str) -> str:
    # A new question each time: an L1 miss, so every request reaches the embedder.
    return f"How do I {topic}, case {uuid.uuid4().hex[:10]}?"


async def load(
    session: aiohttp.ClientSession, gateway_url: str, requests: int, *, stop: Callable[[], bool] = lambda: False
) -> Counter[tuple[int, str | None]]:
    """Up to `requests` requests from CONCURRENCY clients; stops early once `stop()` is true."""
    outcomes: Counter[tuple[int, str | None]] = Counter()
    remaining = iter(range(requests))

    async def client() -> None:
        for _ in remaining:
            if stop():
                return
            outcomes[await chat(session, gateway_url, fresh_question("tune a bicycle"))] += 1

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return outcomes


# ------------------------------------------------------------------ tests


async def test_gateway_spreads_calls_over_every_replica(up: Up, redis_for_up: RedisServer) -> None:
    layout = up.layout()
    gateway_url = layout["gateway"]["url"]
    async with aiohttp.ClientSession() as session:
        before = [await replica_texts(session, r) for r in layout["embedders"]]
        outcomes = await load(session, gateway_url, 40)
        after = [await replica_texts(session, r) for r in layout["embedders"]]
        scored = await replica_calls(session, layout["verifiers"][0], "Score")
        async with session.get(gateway_url + "/ready") as resp:
            assert resp.status == 200, await resp.text()
    assert set(outcomes) <= {(200, "miss"), (200, "hit-l3-verified")}, outcomes
    assert sum(outcomes.values()) == 40
    texts = [a - b for a, b in zip(after, before, strict=True)]
    # round_robin alternates; each of the two replicas gets a real share, not a stray call.
    assert sum(texts) >= 40 and min(texts) >= sum(texts) / 4, texts
    assert scored > 0  # similar questions reached the verifier replica too
    # L1 is the Redis the environment named: the answers were written there.
    assert redis.Redis.from_url(redis_for_up.url).dbsize() > 0


async def test_killed_replica_costs_only_its_in_flight_calls_and_comes_back(up: Up) -> None:
    layout = up.layout()
    gateway_url, gateway_pid = layout["gateway"]["url"], layout["gateway"]["pid"]
    victim, survivor = layout["embedders"]
    async with aiohttp.ClientSession() as session:
        # Warm up so the gateway holds a connection to both replicas, then kill one under load.
        await load(session, gateway_url, 8)
        failures_before = await embedder_failures(session, gateway_url)
        survivor_before = await replica_texts(session, survivor)
        victim_before = await replica_texts(session, victim)

        killed = asyncio.Event()
        victim_served: list[float] = []

        async def kill_when_loaded() -> None:
            await asyncio.sleep(0.3)  # let the load reach full concurrency first
            # Its own count just before it dies (it cannot be read afterwards).
            victim_served.append(await replica_texts(session, victim) - victim_before)
            os.kill(victim["pid"], signal.SIGKILL)
            killed.set()

        def victim_respawned() -> bool:
            # Stop sending once the supervisor starts the replacement: until it is warm its port
            # could answer NOT_SERVING, which is the restart's cost, not the kill's.
            return killed.is_set() and up.layout()["embedders"][0]["state"] not in ("ready", "backoff")

        killer = asyncio.create_task(kill_when_loaded())
        during = await load(session, gateway_url, 120, stop=victim_respawned)
        await killer
        failures = await embedder_failures(session, gateway_url) - failures_before
        survivor_texts = await replica_texts(session, survivor) - survivor_before

        # Every request was answered; those whose embed call died with the replica became misses.
        assert set(during) <= {(200, "miss"), (200, "hit-l3-verified")}, during
        sent = sum(during.values())
        # Each client has at most one lookup embed in flight, plus its previous request's
        # background write-back embed: at most 2 x CONCURRENCY calls can die with the replica.
        assert failures <= 2 * CONCURRENCY, (failures, during)
        # Everything else went to the surviving replica: all but the texts the victim embedded
        # before it died (counted just before the kill, plus at most CONCURRENCY since).
        assert survivor_texts >= sent - failures - victim_served[0] - CONCURRENCY, (survivor_texts, victim_served)
        assert survivor_texts > victim_served[0]  # the load went on past the kill, to the survivor

        # The supervisor restarts the replica on the same port; the gateway, untouched, uses it again.
        restarted = up.wait_for(
            "the killed replica to be restarted and healthy",
            lambda layout: layout["embedders"][0]["restarts"] >= 1 and layout["embedders"][0]["state"] == "ready",
        )
        assert restarted["embedders"][0]["pid"] != victim["pid"]
        assert restarted["embedders"][0]["port"] == victim["port"]
        assert restarted["gateway"]["pid"] == gateway_pid and restarted["gateway"]["restarts"] == 0
        new_victim = restarted["embedders"][0]
        after_restart: Counter[tuple[int, str | None]] = Counter()
        # Bounded: the gateway's channel reconnects within its 2 s backoff cap; calls then alternate.
        for _ in range(10):
            after_restart += await load(session, gateway_url, 16)
            if await replica_calls(session, new_victim, "Embed") > 0:
                break
        assert await replica_calls(session, new_victim, "Embed") > 0, after_restart
        assert {status for status, _ in after_restart} == {200}


def test_sigterm_stops_every_process(up: Up) -> None:
    layout = up.layout()
    pids = [layout["gateway"]["pid"]] + [r["pid"] for r in layout["embedders"] + layout["verifiers"]]
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(timeout=60) == 0, up.log_tail()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone, not merely orphaned
    final = up.layout()
    assert all(c["state"] == "stopped" for c in [final["gateway"], *final["embedders"], *final["verifiers"]])
    assert "all processes stopped" in up.log_file.read_text()


def test_a_replica_that_cannot_start_stops_everything(tmp_path: Path) -> None:
    # A verifier whose model is missing exits at load; retrying would fail the same way, so
    # `reflex up` stops the replicas it already started and exits 1 instead of looping.
    layout_file = tmp_path / "layout.json"
    env = {
        **os.environ,
        "REFLEX_MOCK_PROVIDER": "1",
        "REFLEX_STORAGE_PATH": str(tmp_path / "l2"),
        "REFLEX_RERANKER_PATH": str(tmp_path / "no-such-model"),
        "REFLEX_TORCH_THREADS": "1",
        "REFLEX_SHUTDOWN_GRACE_SECS_GRPC": "1",
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "commands.cli", "up", "--embedders", "1", "--verifiers", "1",
         "--port", "0", "--layout-file", str(layout_file)],
        cwd=REPO, env=env, capture_output=True, timeout=STARTUP_TIMEOUT_S,
    )
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    assert result.returncode == 1, output
    assert re.search(r"verifier-0 exited with code [1-9]\d* before it was healthy", output), output
    assert "REFLEX_RERANKER_PATH" in output  # the child's own message reaches the user
    layout = json.loads(layout_file.read_text())
    assert layout["gateway"]["pid"] is None  # never started
    for replica in layout["embedders"] + layout["verifiers"]:
        assert replica["state"] == "stopped"
        with pytest.raises(ProcessLookupError):
            os.kill(replica["pid"], 0)
