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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from reflex.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from reflex.tiers import TierUnavailable
from services.embedder.model import EmbeddingModel
from services.gateway.model_clients import GrpcEmbedder
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


# --------------------------------------------------------------- lookups sharing Embed calls
# REFLEX_EMBEDDER_COALESCE_MAX: a call goes at once while none is in flight; the calls made
# while one is wait for the end of the loop turn and go together.

async def test_calls_made_while_one_is_in_flight_share_embed_calls(two_replicas: list[RunningServer]) -> None:
    server = two_replicas[0]
    texts = [f"How do I reverse a list in language number {i}?" for i in range(20)]
    alone, shared = GrpcEmbedder(server.target), GrpcEmbedder(server.target, coalesce_max=8)
    try:
        expected = [(await alone.embed([t], timeout=60))[0] for t in texts]
        before = embed_calls(server)
        lone = await shared.embed([texts[0]], timeout=60)
        assert embed_calls(server) - before == 1  # nothing was in flight: it went at once, alone
        before = embed_calls(server)
        got = await asyncio.gather(*(shared.embed([t], timeout=60) for t in texts))
        # The first went at once; the 19 made while it was in flight went as 8 + 8 + 3.
        assert embed_calls(server) - before == 4
    finally:
        await alone.close()
        await shared.close()
    assert lone[0] == pytest.approx(expected[0], abs=1e-5)
    for vectors, want in zip(got, expected, strict=True):
        assert len(vectors) == 1 and vectors[0] == pytest.approx(want, abs=1e-5)  # each its own text's vector


class SlowEmbedder(embedder_pb2_grpc.EmbedderServiceServicer):
    """Answers each Embed after ``delay`` s with vectors that name their text's position, or
    with ``fail`` as its status."""

    def __init__(self, delay: float, fail: grpc.StatusCode | None = None) -> None:
        self.delay, self.fail, self.calls = delay, fail, []

    async def Embed(self, request, context):  # noqa: N802 (the proto's name)
        self.calls.append(list(request.texts))
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            await context.abort(self.fail, "queue full")
        return embedder_pb2.EmbedResponse(vectors=[embedder_pb2.Vector(values=[float(len(t))]) for t in request.texts])


@pytest.fixture
async def slow_server() -> AsyncIterator[tuple[str, SlowEmbedder]]:
    servicer = SlowEmbedder(0.3)
    server = grpc.aio.server()
    embedder_pb2_grpc.add_EmbedderServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", servicer
    await server.stop(0)


async def test_a_waiting_call_that_times_out_or_leaves_does_not_disturb_the_others(
        slow_server: tuple[str, SlowEmbedder]) -> None:
    target, servicer = slow_server
    client = GrpcEmbedder(target, coalesce_max=8)
    try:
        first = asyncio.create_task(client.embed(["a"], timeout=5))
        await asyncio.sleep(0.05)  # in flight now: the next ones wait for the end of their turn
        impatient = asyncio.create_task(client.embed(["bb"], timeout=0.05))
        leaving = asyncio.create_task(client.embed(["ccc"], timeout=5))
        patient = asyncio.create_task(client.embed(["dddd", "eeeee"], timeout=5))
        await asyncio.sleep(0.01)
        leaving.cancel()
        with pytest.raises(TierUnavailable) as err:
            await impatient
        assert err.value.reason == "timeout"
        assert await patient == [[4.0], [5.0]]  # its own texts' vectors, in order, from the shared call
        assert await first == [[1.0]]
        with pytest.raises(asyncio.CancelledError):
            await leaving
    finally:
        await client.close()
    # One call for the first; one shared call for the three that waited (the shared call had left
    # before the one leaving was cancelled, so it carries its text too).
    assert servicer.calls == [["a"], ["bb", "ccc", "dddd", "eeeee"]]


async def test_a_failed_shared_call_gives_each_waiting_call_its_own_error(
        slow_server: tuple[str, SlowEmbedder]) -> None:
    target, servicer = slow_server
    servicer.fail = grpc.StatusCode.RESOURCE_EXHAUSTED
    client = GrpcEmbedder(target, coalesce_max=2)
    try:
        first = asyncio.create_task(client.embed(["a"], timeout=5))
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(client.embed([t], timeout=5)) for t in ("b", "c", "d")]
        outcomes = await asyncio.gather(first, *waiting, return_exceptions=True)
    finally:
        await client.close()
    assert all(isinstance(o, TierUnavailable) and o.reason == "overloaded" for o in outcomes), outcomes
    assert len({id(o) for o in outcomes}) == 4  # no exception object shared between callers
    assert all(str(o) == "embedder unavailable (overloaded): RESOURCE_EXHAUSTED: queue full" for o in outcomes)
    assert servicer.calls == [["a"], ["b", "c"], ["d"]]  # at most coalesce_max texts per call
