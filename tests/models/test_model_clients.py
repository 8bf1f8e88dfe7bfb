"""The gateway's gRPC clients against real servers: round_robin over replicas, and an embedder
process killed mid-run (TierUnavailable, not a hang; recovery when it comes back)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.embedder.model import EmbeddingModel
from services.gateway.model_clients import GrpcEmbedder
from reflex.tiers import TierUnavailable
from tests.support.loop_thread import LoopThread
from tests.support.models import RunningServer, model_settings, run_embedder

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_replicas(model_loop: LoopThread, minilm_model: EmbeddingModel) -> Iterator[list[RunningServer]]:
    # Two servers sharing one loaded model: two replicas as far as gRPC can tell.
    replicas = [run_embedder(model_loop, model_settings(), minilm_model) for _ in range(2)]
    yield replicas
    for r in replicas:
        r.stop()


def embed_calls(server: RunningServer) -> float:
    return server.metric("reflex_embedder_requests_total", {"method": "Embed"})


async def test_round_robin_spreads_calls_over_all_replicas(two_replicas: list[RunningServer]) -> None:
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in two_replicas)
    before = [embed_calls(r) for r in two_replicas]
    client = GrpcEmbedder(target)
    try:
        for i in range(40):
            await client.embed([f"call {i}"], timeout=60)
    finally:
        await client.close()
    served = [embed_calls(r) - b for r, b in zip(two_replicas, before, strict=True)]
    assert sum(served) == 40
    assert all(n >= 10 for n in served), served  # pick_first would give [40, 0]


async def test_dns_target_resolves_and_serves(two_replicas: list[RunningServer]) -> None:
    # The form a Kubernetes headless Service takes (dns:///reflex-embedder:50051).
    client = GrpcEmbedder(f"dns:///localhost:{two_replicas[0].port}")
    try:
        assert len((await client.embed(["resolved by name"], timeout=60))[0]) == 384
        await client.check()
    finally:
        await client.close()


def read_url(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_embedder_process(port: int, metrics_port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REFLEX_GRPC_PORT": str(port), "REFLEX_METRICS_PORT": str(metrics_port),
           "REFLEX_TORCH_THREADS": "1", "REFLEX_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "commands.cli", "embedder"], cwd=REPO, env=env)


async def wait_serving(client: GrpcEmbedder, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):  # bounded: a model load on a busy 2-core machine can take a while
        assert proc.poll() is None, "embedder process exited"
        try:
            await client.check()
            return
        except TierUnavailable:
            await asyncio.sleep(0.2)
    raise AssertionError("embedder process never reported SERVING")


async def test_embedder_killed_mid_run_then_back_on_the_same_port() -> None:
    port, metrics_port = free_port(), free_port()
    proc = start_embedder_process(port, metrics_port)
    client = GrpcEmbedder(f"127.0.0.1:{port}")
    try:
        await wait_serving(client, proc)
        assert len((await client.embed(["before the crash"], timeout=30))[0]) == 384
        metrics = await asyncio.to_thread(read_url, f"http://127.0.0.1:{metrics_port}/metrics")
        assert 'reflex_embedder_requests_total{method="Embed"}' in metrics
        assert "reflex_embedder_stage_seconds_bucket" in metrics and "reflex_embedder_batch_size_bucket" in metrics

        in_flight = [asyncio.create_task(client.embed([f"during {i}"], timeout=30)) for i in range(8)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
        assert all(isinstance(o, (list, TierUnavailable)) for o in outcomes), outcomes
        with pytest.raises(TierUnavailable) as err:
            await asyncio.wait_for(client.embed(["while it is down"], timeout=5), 30)  # an error, not a hang
        assert err.value.reason in {"unavailable", "timeout"}

        proc = start_embedder_process(port, metrics_port)
        await wait_serving(client, proc)  # the same client channel reconnects by itself
        assert len((await client.embed(["after the restart"], timeout=30))[0]) == 384
    finally:
        await client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0  # SIGTERM: graceful shutdown, clean exit
