"""Layer 2: the embedder gRPC service in-process on port 0, with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sentence_transformers import SentenceTransformer

from reflex.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from reflex.tiers import ServerTiming, TierUnavailable
from services.embedder.in_process import InProcessEmbedder
from services.embedder.main import start_embedder_server
from services.embedder.model import EmbeddingModel
from services.embedder.service import EMBEDDER_SPEC, GRPC_SERVICE
from services.gateway.model_clients import GrpcEmbedder
from services.model_server.grpc_server import ModelServer, start_model_server
from tests.support.models import BrokenForward, GatedBackend, RunningServer, cosine, model_settings

# The service runs the shipped default backend (REFLEX_EMBEDDER_BACKEND): int8 moves vectors a
# little and makes a row depend slightly on its batch-mates (one activation scale per batch);
# fp32 backends are held to sentence-transformers exactly. tests/models/test_backends.py checks
# each backend against torch; `reflex eval` checks that int8 loses nothing that matters.
EXACT_BACKENDS = ("float32", "onnx")


def tolerance(model: EmbeddingModel, exact: float, int8: float) -> float:
    return exact if model.runtime.dtype_name in EXACT_BACKENDS else int8


TEXTS = [
    "How do I center a div in CSS?",
    "What's the CSS to center a div horizontally and vertically?",
    "Ünïcödé, emoji 🚀 and punctuation?!",
    "x",
    "long " * 400,  # past the 256-token limit: truncated exactly as sentence-transformers does
]


@pytest.fixture
async def client(embedder_server: RunningServer) -> AsyncIterator[GrpcEmbedder]:
    c = GrpcEmbedder(embedder_server.target)
    yield c
    await c.close()


async def test_vectors_match_sentence_transformers(client: GrpcEmbedder, minilm_model: EmbeddingModel) -> None:
    reference = SentenceTransformer(str(minilm_model.path), device="cpu").encode(TEXTS)
    vectors = await client.embed(TEXTS, timeout=60)
    assert len(vectors) == len(TEXTS)
    for got, want in zip(vectors, reference, strict=True):
        assert len(got) == len(want)
        assert cosine(got, want) > tolerance(minilm_model, 0.999, 0.97)
        assert abs(sum(x * x for x in got) - 1.0) < 1e-4  # unit length


async def test_info_reads_the_dimension_from_the_model(embedder_server: RunningServer,
                                                       minilm_model: EmbeddingModel) -> None:
    async with grpc.aio.insecure_channel(embedder_server.target) as channel:
        info = await embedder_pb2_grpc.EmbedderServiceStub(channel).Info(embedder_pb2.InfoRequest(), timeout=10)
    assert info.dimension == minilm_model.model.config.hidden_size == 384
    assert info.max_tokens == 256 and info.device == "cpu"
    # The backend, not only the torch dtype: reflex eval keys its embedding cache on it.
    assert info.dtype == minilm_model.runtime.dtype_name == model_settings().model.embedder_backend


async def test_concurrent_callers_are_batched_and_each_gets_its_own_vector(
    client: GrpcEmbedder, embedder_server: RunningServer, minilm_model: EmbeddingModel
) -> None:
    texts = [f"question number {i} about caching" for i in range(32)]
    alone = [(await client.embed([t], timeout=60))[0] for t in texts[:3]]
    passes_before = embedder_server.metric("reflex_embedder_batch_size_count")
    together = await asyncio.gather(*(client.embed([t], timeout=60) for t in texts))
    passes = embedder_server.metric("reflex_embedder_batch_size_count") - passes_before
    assert 1 <= passes < len(texts)
    for mine, reference in zip(together[:3], alone, strict=True):
        assert cosine(mine[0], reference) > tolerance(minilm_model, 0.9999, 0.97)
    # Distinct texts, distinct vectors: nobody got a neighbour's row.
    assert all(cosine(together[i][0], together[i + 1][0]) < 0.9999 for i in range(len(texts) - 1))


async def test_timings_come_back_to_the_caller(embedder_server: RunningServer) -> None:
    seen: list[tuple[str, ServerTiming]] = []
    c = GrpcEmbedder(embedder_server.target, on_timing=lambda component, t: seen.append((component, t)))
    try:
        await c.embed(["timing please"], timeout=60)
    finally:
        await c.close()
    assert len(seen) == 1 and seen[0][0] == "embedder"
    assert seen[0][1].inference_s > 0 and seen[0][1].tokenize_s > 0


async def test_empty_request_is_invalid_argument(embedder_server: RunningServer, client: GrpcEmbedder) -> None:
    async with grpc.aio.insecure_channel(embedder_server.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await embedder_pb2_grpc.EmbedderServiceStub(channel).Embed(embedder_pb2.EmbedRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(TierUnavailable) as tier:
        await client.embed([], timeout=10)
    assert tier.value.reason == "error"
    assert embedder_server.metric("reflex_embedder_failures_total", {"reason": "invalid_input"}) >= 2


def client_of(kind: str, server: ModelServer[EmbeddingModel]) -> GrpcEmbedder | InProcessEmbedder:
    """The gateway's client of ``server``: over gRPC, or in process (reflex serve's default)."""
    return GrpcEmbedder(f"127.0.0.1:{server.port}") if kind == "grpc" else InProcessEmbedder(server)


@pytest.mark.parametrize("kind", ["grpc", "in-process"])
async def test_full_queue_answers_resource_exhausted(minilm_model: EmbeddingModel, kind: str) -> None:
    gated = GatedBackend(minilm_model)
    server = await start_embedder_server(model_settings(max_queue=4), 0, load_backend=lambda _s: gated)
    c = client_of(kind, server)
    try:
        gated.close_gate()
        admitted = asyncio.create_task(c.embed(["a", "b", "c", "d"], timeout=60))
        await asyncio.to_thread(gated.entered.wait, 30)
        with pytest.raises(TierUnavailable) as err:
            await c.embed(["one too many"], timeout=60)
        assert err.value.reason == "overloaded"
        gated.open_gate()
        assert len(await admitted) == 4
        assert len(await c.embed(["room again"], timeout=60)) == 1
    finally:
        gated.open_gate()
        await c.close()
        await server.stop(0)


@pytest.mark.parametrize("kind", ["grpc", "in-process"])
async def test_deadline_past_is_a_timeout(minilm_model: EmbeddingModel, kind: str) -> None:
    gated = GatedBackend(minilm_model)
    server = await start_embedder_server(model_settings(max_queue=4), 0, load_backend=lambda _s: gated)
    c = client_of(kind, server)
    try:
        gated.close_gate()
        with pytest.raises(TierUnavailable) as err:
            await c.embed(["slow"], timeout=0.3)
        assert err.value.reason == "timeout"
        gated.open_gate()
        # the late call's item left the queue with its caller: there is room for four again
        assert len(await c.embed(["e", "f", "g", "h"], timeout=60)) == 4
        assert server.batcher is not None and server.batcher.inflight == 0
    finally:
        gated.open_gate()
        await c.close()
        await server.stop(0)


async def _health(channel: grpc.aio.Channel, service: str = GRPC_SERVICE) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return reply.status


async def test_health_not_serving_until_warm_then_serving_then_drains_on_stop(minilm_model: EmbeddingModel) -> None:
    load_gate = threading.Event()
    gated = GatedBackend(minilm_model)

    def slow_load(_settings: object) -> GatedBackend:
        assert load_gate.wait(60), "test never let the model load"
        return gated

    server = await start_embedder_server(model_settings(), 0, wait_ready=False, load_backend=slow_load)
    target = f"127.0.0.1:{server.port}"
    c = GrpcEmbedder(target)
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            # Loading: probes get an answer, and it is NOT_SERVING; the RPCs say UNAVAILABLE.
            assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await _health(channel, "") == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(TierUnavailable) as err:
                await c.embed(["too early"], timeout=10)
            assert err.value.reason == "unavailable"
            with pytest.raises(TierUnavailable):
                await c.check()

            load_gate.set()
            await server.wait_ready()
            # The warm-up batch ran through the real batcher before SERVING.
            assert server.registry.get_sample_value("reflex_embedder_batch_size_count") >= 1
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
            await c.check()

            # Graceful stop: watchers see NOT_SERVING, the in-flight call still completes.
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=GRPC_SERVICE))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            gated.close_gate()
            in_flight = asyncio.create_task(c.embed(["in flight during shutdown"], timeout=60))
            await asyncio.to_thread(gated.entered.wait, 30)
            stopping = asyncio.create_task(server.stop(grace=30))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()  # an open Watch stream is an in-flight RPC too: it would hold the grace period
            gated.open_gate()
            assert len((await in_flight)[0]) == 384
            await stopping
            with pytest.raises(TierUnavailable):
                await c.embed(["after stop"], timeout=5)
        finally:
            load_gate.set()
            gated.open_gate()
            await c.close()
            await server.stop(0)


async def test_failed_warm_up_never_turns_serving(minilm_model: EmbeddingModel) -> None:
    server = await start_embedder_server(model_settings(), 0, wait_ready=False,
                                         load_backend=lambda _s: BrokenForward(minilm_model))
    c = GrpcEmbedder(f"127.0.0.1:{server.port}")
    try:
        with pytest.raises(Exception, match="forward pass failed"):
            await server.wait_ready()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(TierUnavailable) as err:
            await c.embed(["anyone there?"], timeout=10)
        assert err.value.reason == "unavailable"
    finally:
        await c.close()
        await server.stop(0)


async def test_a_taken_port_is_an_error_not_a_shared_socket(embedder_server: RunningServer,
                                                           minilm_model: EmbeddingModel) -> None:
    with pytest.raises(OSError, match="cannot bind"):
        await start_embedder_server(model_settings(), embedder_server.port, load_backend=lambda _s: minilm_model)


async def _wait_health(channel: grpc.aio.Channel, want: int, service: str = GRPC_SERVICE) -> int:
    """Poll Check until it reports ``want`` (health is published by a task of the server's own,
    a moment after the batch that decided it); return the last status seen."""
    status = await _health(channel, service)
    for _ in range(200):
        if status == want:
            break
        await asyncio.sleep(0.05)
        status = await _health(channel, service)
    return status


async def test_health_turns_not_serving_after_n_failed_forward_passes_and_back_after_a_success(
    minilm_model: EmbeddingModel,
) -> None:
    n = 3
    backend = BrokenForward(minilm_model, broken=False)
    # No self-probe: only the caller's successful call below may bring it back.
    server = await start_model_server(EMBEDDER_SPEC, model_settings(unhealthy_after_failures=n), 0,
                                      load_backend=lambda _s: backend, recovery_probe_s=None)
    # A plain channel (no client-side health checking), so calls reach the server whatever it reports.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
        try:
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
            backend.broken = True
            for attempt in range(1, n + 1):
                if attempt == n:
                    # n - 1 failures in a row are tolerated (checked before the n-th is sent).
                    assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
                    assert await _health(channel, "") == health_pb2.HealthCheckResponse.SERVING
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Embed(embedder_pb2.EmbedRequest(texts=[f"attempt {attempt}"]), timeout=30)
                assert err.value.code() == grpc.StatusCode.INTERNAL
                assert "forward pass failed: RuntimeError" in (err.value.details() or "")
            not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
            assert await _wait_health(channel, not_serving) == not_serving
            assert await _wait_health(channel, not_serving, "") == not_serving  # what round_robin watches

            backend.broken = False
            reply = await stub.Embed(embedder_pb2.EmbedRequest(texts=["the model works again"]), timeout=30)
            assert len(reply.vectors) == 1
            serving = health_pb2.HealthCheckResponse.SERVING
            assert await _wait_health(channel, serving) == serving
            assert await _wait_health(channel, serving, "") == serving
        finally:
            backend.broken = False
            await server.stop(0)


async def test_a_failing_replica_gets_no_calls_and_probes_itself_back(minilm_model: EmbeddingModel) -> None:
    backend = BrokenForward(minilm_model, broken=False)
    server = await start_model_server(EMBEDDER_SPEC, model_settings(unhealthy_after_failures=1), 0,
                                      load_backend=lambda _s: backend, recovery_probe_s=0.1)
    target = f"127.0.0.1:{server.port}"
    c = GrpcEmbedder(target)  # the gateway's client: round_robin with client-side health checking

    def received() -> float:
        return server.registry.get_sample_value("reflex_embedder_requests_total", {"method": "Embed"}) or 0.0

    try:
        assert len(await c.embed(["healthy"], timeout=30)) == 1
        backend.broken = True
        reasons = []
        for _ in range(100):  # the client stops sending once its health watch sees NOT_SERVING
            with pytest.raises(TierUnavailable) as err:
                await c.embed(["broken"], timeout=30)
            reasons.append(err.value.reason)
            if err.value.reason == "unavailable":
                break
            await asyncio.sleep(0.05)
        assert reasons[0] == "error" and reasons[-1] == "unavailable", reasons
        before = received()
        with pytest.raises(TierUnavailable):
            await c.embed(["not even sent"], timeout=30)
        assert received() == before  # refused on the client side: the replica never saw it

        backend.broken = False  # nobody calls it now; its own probe must find out
        async with grpc.aio.insecure_channel(target) as channel:
            serving = health_pb2.HealthCheckResponse.SERVING
            assert await _wait_health(channel, serving, "") == serving
        for _ in range(100):  # and the client sends to it again once its watch sees SERVING
            try:
                assert len(await c.embed(["welcome back"], timeout=30)) == 1
                break
            except TierUnavailable:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("the client never sent to the recovered replica again")
    finally:
        backend.broken = False
        await c.close()
        await server.stop(0)


async def test_health_service_is_not_touched_by_the_error_interceptor(embedder_server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(embedder_server.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _health(channel, "no.such.Service")
        # The health servicer's own code, not INTERNAL from a wrapper; and probes are not RPCs.
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    methods = {s.labels["method"] for m in embedder_server.server.registry.collect()
               if m.name == "reflex_embedder_requests" for s in m.samples}
    assert methods <= {"Embed", "Info"}


async def test_the_interceptor_wraps_each_method_once_and_never_remembers_unknown_paths() -> None:
    # The wrapper is built on a method's first call and reused; a path the server does not
    # serve (any string a client sends) is never kept, so the cache stays the size of the API.
    from services.model_server.interceptors import ErrorMappingInterceptor
    from services.model_server.metrics import ModelMetrics

    async def behaviour(request: object, context: object) -> str:
        return "answer"

    handler = grpc.unary_unary_rpc_method_handler(behaviour)
    built: list[str] = []

    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        built.append(details.method)
        return handler if details.method == f"/{GRPC_SERVICE}/Embed" else None

    class Details(grpc.HandlerCallDetails):
        def __init__(self, method: str) -> None:
            self.method, self.invocation_metadata = method, ()

    interceptor = ErrorMappingInterceptor("embedder", GRPC_SERVICE, ModelMetrics("embedder", max_batch_size=4))
    first = await interceptor.intercept_service(continuation, Details(f"/{GRPC_SERVICE}/Embed"))
    again = await interceptor.intercept_service(continuation, Details(f"/{GRPC_SERVICE}/Embed"))
    assert first is again and first is not handler and built == [f"/{GRPC_SERVICE}/Embed"]
    assert await first.unary_unary(None, None) == "answer"
    for n in range(3):
        assert await interceptor.intercept_service(continuation, Details(f"/{GRPC_SERVICE}/Nope{n}")) is None
    assert len(built) == 4  # each unknown path asked the server again: nothing was kept for it
