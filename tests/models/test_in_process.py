"""The in-process model clients (``reflex serve``'s default, services/model_server/in_process.py)
against real model servers: the same vectors, scores, accounting and failures as the gRPC
clients of the same servers, and health as grpc.health.v1 reports it (a full queue and a late
answer: tests/models/test_embedder_service.py, for both clients)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from reflex.tiers import ServerTiming, TierUnavailable
from services.embedder.in_process import InProcessEmbedder
from services.embedder.main import start_embedder_server
from services.embedder.model import EmbeddingModel
from services.embedder.service import EMBEDDER_SPEC
from services.gateway.model_clients import GrpcEmbedder, GrpcVerifier
from services.model_server.grpc_server import start_model_server
from services.verifier.in_process import InProcessVerifier
from tests.support.models import BrokenForward, RunningServer, model_settings

T = TypeVar("T")

QUERY = "How do I center a div in CSS?"
CANDIDATES = [
    "What's the CSS to center a div horizontally and vertically?",
    "How do I center a div in CSS?",
    "How do I left-align a div in CSS?",
    "What is the capital of France?",
]
COSINES = [0.86, 1.0, 0.83, 0.05]


async def on_server_loop(running: RunningServer, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the loop the session's server runs on (its batcher's loop), as
    ``reflex serve`` does: the gateway and the models share one loop."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, running.loop_thread.loop))


async def test_the_embedder_gives_the_grpc_clients_vectors_and_is_counted_the_same(
        embedder_server: RunningServer) -> None:
    seen: list[tuple[str, ServerTiming]] = []
    local = InProcessEmbedder(embedder_server.server, on_timing=lambda c, t: seen.append((c, t)))
    remote = GrpcEmbedder(embedder_server.target)
    texts = ["How do I center a div in CSS?", "x", "Ünïcödé 🚀"]
    try:
        calls = embedder_server.metric("reflex_embedder_requests_total", {"method": "Embed"})
        got = await on_server_loop(embedder_server, local.embed(texts, timeout=60))
        assert embedder_server.metric("reflex_embedder_requests_total", {"method": "Embed"}) == calls + 1
        want = await remote.embed(texts, timeout=60)
        assert len(got) == len(want) == 3
        for g, w in zip(got, want, strict=True):
            assert g == pytest.approx(w, abs=1e-6)  # float32 both ways; batch-mates may differ
        assert [c for c, _ in seen] == ["embedder"]
        assert seen[0][1].inference_s > 0
        await on_server_loop(embedder_server, local.check())
    finally:
        await remote.close()
        await local.close()


async def test_the_verifier_gives_the_grpc_clients_scores(verifier_server: RunningServer) -> None:
    seen: list[str] = []
    local = InProcessVerifier(verifier_server.server, on_timing=lambda c, _t: seen.append(c))
    remote = GrpcVerifier(verifier_server.target)
    try:
        for cosines, min_score in ((COSINES, 0.0), (COSINES, 0.96), (None, 0.0)):
            got = await on_server_loop(verifier_server, local.score(QUERY, CANDIDATES, cosines, timeout=60,
                                                                     min_score=min_score))
            want = await remote.score(QUERY, CANDIDATES, cosines, timeout=60, min_score=min_score)
            # float32 both ways, as the proto carries them: the same decision at the threshold
            assert got == pytest.approx(want, abs=1e-6)
            assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in got)
        assert seen == ["verifier"] * 3
        with pytest.raises(ValueError):
            await on_server_loop(verifier_server, local.score(QUERY, CANDIDATES, [0.5], timeout=60))
    finally:
        await remote.close()


@pytest.mark.parametrize("call", ["empty texts", "empty query", "no candidates", "a NaN cosine"])
async def test_bad_calls_are_errors_counted_as_invalid_input(embedder_server: RunningServer,
                                                             verifier_server: RunningServer, call: str) -> None:
    running, name = (embedder_server, "embedder") if call == "empty texts" else (verifier_server, "verifier")
    before = running.metric(f"reflex_{name}_failures_total", {"reason": "invalid_input"})
    if name == "embedder":
        coro = InProcessEmbedder(running.server).embed([], timeout=10)
    else:
        query, candidates, cosines = {
            "empty query": (" ", ["x"], None), "no candidates": (QUERY, [], None),
            "a NaN cosine": (QUERY, ["x"], [float("nan")]),
        }[call]
        coro = InProcessVerifier(running.server).score(query, candidates, cosines, timeout=10)
    with pytest.raises(TierUnavailable) as err:
        await on_server_loop(running, coro)
    assert (err.value.component, err.value.reason) == (name, "error")
    assert running.metric(f"reflex_{name}_failures_total", {"reason": "invalid_input"}) == before + 1


async def test_check_and_calls_follow_the_servers_health(minilm_model: EmbeddingModel) -> None:
    load_gate = threading.Event()

    def slow_load(_settings: object) -> EmbeddingModel:
        assert load_gate.wait(60), "test never let the model load"
        return minilm_model

    server = await start_embedder_server(model_settings(), 0, wait_ready=False, load_backend=slow_load)
    local = InProcessEmbedder(server)
    try:
        with pytest.raises(TierUnavailable) as err:
            await local.check()
        assert err.value.reason == "unavailable"
        with pytest.raises(TierUnavailable) as err:
            await local.embed(["too early"], timeout=10)
        assert err.value.reason == "unavailable"
        load_gate.set()
        await server.wait_ready()
        await local.check()
        assert len(await local.embed(["warm now"], timeout=60)) == 1
        await server.stop(0)
        with pytest.raises(TierUnavailable) as err:
            await local.check()
        assert err.value.reason == "unavailable"
        with pytest.raises(TierUnavailable) as err:
            await local.embed(["after stop"], timeout=10)
        assert err.value.reason == "unavailable"
    finally:
        load_gate.set()
        await server.stop(0)


async def test_failing_forward_passes_refuse_calls_until_the_server_probes_itself_back(
        minilm_model: EmbeddingModel) -> None:
    backend = BrokenForward(minilm_model, broken=False)
    server = await start_model_server(EMBEDDER_SPEC, model_settings(unhealthy_after_failures=2), 0,
                                      load_backend=lambda _s: backend, recovery_probe_s=0.1)
    local = InProcessEmbedder(server)
    try:
        backend.broken = True
        for _ in range(2):
            with pytest.raises(TierUnavailable) as err:
                await local.embed(["fails"], timeout=30)
            assert err.value.reason == "error"
        calls = server.registry.get_sample_value("reflex_embedder_requests_total", {"method": "Embed"})
        # NOT_SERVING now: refused at once, never sent to the model (as over gRPC with health checking)
        with pytest.raises(TierUnavailable) as err:
            await local.embed(["refused"], timeout=30)
        assert err.value.reason == "unavailable"
        with pytest.raises(TierUnavailable):
            await local.check()
        assert server.registry.get_sample_value("reflex_embedder_requests_total", {"method": "Embed"}) == calls
        backend.broken = False
        for _ in range(100):  # the server's own probe brings it back
            if server.reports_serving:
                break
            await asyncio.sleep(0.05)
        await local.check()
        assert len(await local.embed(["works again"], timeout=30)) == 1
    finally:
        backend.broken = False
        await server.stop(0)
