"""The gateway's gRPC clients for the model services (``Embedder`` / ``Verifier`` in tiers.py).

One long-lived channel per service. The target is any gRPC target string:
``127.0.0.1:50051``, ``dns:///reflex-embedder:50051`` (a Kubernetes headless Service: one
address per pod) or ``ipv4:127.0.0.1:5001,127.0.0.1:5002`` (local replicas). The channel
always uses the ``round_robin`` policy: the default ``pick_first`` would send every call over
one HTTP/2 connection to one replica, however many the name resolves to.

Every call has a deadline, and every gRPC failure becomes ``TierUnavailable(component,
reason)``: the gateway then serves the request as a plain miss instead of failing it.

Lookups share Embed calls under load (``coalesce_max`` texts at most per call,
REFLEX_EMBEDDER_COALESCE_MAX): a lookup's call goes at once while none is in flight, and those
made while one is go together at the end of the event-loop turn. A busy gateway makes one RPC
for several lookups; an idle one's lookup waits for nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reflex import keepalive
from reflex.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from reflex.settings import ModelClientSettings
from reflex.tiers import ServerTiming, TierUnavailable, TimingCallback
from reflex.verifier.v1 import verifier_pb2, verifier_pb2_grpc

log = logging.getLogger("reflex.gateway.models")

# Client-side health checking (grpc.health.v1 Watch, service ""): round_robin only picks
# replicas that report SERVING, so a replica that is up but still loading its model, or
# draining after SIGTERM, gets no calls (measured: 0 of 20 calls to a NOT_SERVING replica,
# against 11 of 20 without it). The cost is one open Watch stream per replica per gateway.
_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
})

# A model replica that restarts (rollout, OOM kill) should get traffic again within seconds;
# gRPC's default reconnect backoff grows to 120 s. Capping it at 2 s costs at most one
# connection attempt per address every 2 s while a replica is down.
_CHANNEL_OPTIONS: tuple[tuple[str, object], ...] = (
    ("grpc.service_config", _SERVICE_CONFIG),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Re-resolve DNS (new pods behind a headless Service) at most every 5 s, not every 30 s.
    ("grpc.dns_min_time_between_resolutions_ms", 5000),
    # Keepalive finds a dead peer (a node gone without a FIN) on an idle channel; the model
    # servers permit exactly these pings (reflex/keepalive.py).
    *keepalive.client_options(),
)

# gRPC status -> TierUnavailable.reason (low-cardinality metric label on the gateway side).
_REASON_BY_STATUS: Mapping[grpc.StatusCode, str] = MappingProxyType({
    grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "overloaded",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
})


def _to_tier_unavailable(component: str, exc: grpc.aio.AioRpcError) -> TierUnavailable:
    reason = _REASON_BY_STATUS.get(exc.code(), "error")
    return TierUnavailable(component, reason, f"{exc.code().name}: {exc.details() or ''}".strip())


class _GrpcModelClient:
    component: str
    grpc_service: str

    def __init__(self, target: str, *, on_timing: TimingCallback | None = None,
                 check_timeout: float = 2.0) -> None:
        self.target = target
        self._on_timing = on_timing
        self._check_timeout = check_timeout
        self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def _report(self, timing: embedder_pb2.Timing | verifier_pb2.Timing) -> ServerTiming:
        server_timing = ServerTiming.from_ns(timing.queue_time_ns, timing.tokenize_time_ns,
                                            timing.inference_time_ns)
        log.debug("%s timing: queue %.2f ms, tokenize %.2f ms, inference %.2f ms", self.component,
                  server_timing.queue_s * 1e3, server_timing.tokenize_s * 1e3, server_timing.inference_s * 1e3)
        if self._on_timing is not None:
            self._on_timing(self.component, server_timing)
        return server_timing

    async def check(self) -> None:
        """Raise TierUnavailable unless (one replica of) the service reports SERVING."""
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service=self.grpc_service), timeout=self._check_timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _to_tier_unavailable(self.component, exc) from exc
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise TierUnavailable(self.component, "unavailable",
                                  health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def close(self) -> None:
        await self._channel.close()


@dataclass(slots=True)
class _Waiting:
    """A lookup's texts, waiting for the shared call at the end of its loop turn."""

    texts: list[str]
    timeout: float
    future: asyncio.Future[list[list[float]]] = field(repr=False)


class GrpcEmbedder(_GrpcModelClient):
    """``Embedder`` over gRPC. With ``coalesce_max`` > 1, a call of at most that many texts
    goes at once only when none of this client's Embed calls is in flight; otherwise it waits
    for the end of the current event-loop turn, and what gathered in the turn is sent in calls
    of at most ``coalesce_max`` texts. An idle gateway's lookup waits for nothing; a busy one's
    waits one loop turn, behind calls that the server is busy with anyway.

    Written here rather than taken from aiodataloader (the usual asyncio batch loader): its
    dispatch goes through two tasks and about three loop turns before the RPC starts, which
    cost a lone Embed 3-4% (0.3 ms) here."""

    component = "embedder"
    grpc_service = embedder_pb2.DESCRIPTOR.services_by_name["EmbedderService"].full_name

    def __init__(self, target: str, *, on_timing: TimingCallback | None = None, check_timeout: float = 2.0,
                 coalesce_max: int = 1) -> None:
        super().__init__(target, on_timing=on_timing, check_timeout=check_timeout)
        if coalesce_max < 1:
            raise ValueError("coalesce_max must be >= 1")
        self._stub = embedder_pb2_grpc.EmbedderServiceStub(self._channel)
        self._coalesce_max = coalesce_max
        # Calls waiting for the end of this loop turn (None: no turn-end send scheduled).
        self._gathering: list[_Waiting] | None = None
        self._in_flight = 0  # Embed RPCs sent and not yet answered
        self._shared_calls: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    @classmethod
    def from_settings(cls, settings: ModelClientSettings, *, target: str | None = None,
                      on_timing: TimingCallback | None = None) -> "GrpcEmbedder":
        target = target or settings.embedder_url
        if not target:
            raise ValueError("REFLEX_EMBEDDER_URL is unset and no target was given")
        return cls(target, on_timing=on_timing, check_timeout=settings.embedder_timeout_ms / 1000,
                   coalesce_max=settings.embedder_coalesce_max)

    async def embed(self, texts: Sequence[str], *, timeout: float) -> list[list[float]]:
        texts = list(texts)
        # At once: when sharing is off, when nothing is in flight (an idle gateway waits for
        # nothing), for large calls (reflex eval's chunks) and for an empty one (the server's answer).
        if (self._coalesce_max == 1 or (self._in_flight == 0 and self._gathering is None)
                or not texts or len(texts) > self._coalesce_max):
            return await self._call(texts, timeout)
        loop = asyncio.get_running_loop()
        if self._gathering is None:
            self._gathering = []
            loop.call_soon(self._send_gathered)
        waiting = _Waiting(texts, timeout, loop.create_future())
        self._gathering.append(waiting)
        try:
            # Each caller keeps its own deadline. One that leaves (timeout, cancellation) only
            # cancels its own future; the shared call goes on for the others.
            async with asyncio.timeout(timeout):
                return await waiting.future
        except TimeoutError:
            raise TierUnavailable(self.component, "timeout", f"no Embed reply within {timeout} s") from None

    def _send_gathered(self) -> None:
        waiting = [w for w in self._gathering or () if not w.future.done()]
        self._gathering = None
        group: list[_Waiting] = []
        size = 0
        for w in waiting:
            if group and size + len(w.texts) > self._coalesce_max:
                self._start_shared_call(group)
                group, size = [], 0
            group.append(w)
            size += len(w.texts)
        if group:
            self._start_shared_call(group)

    def _start_shared_call(self, group: list[_Waiting]) -> None:
        task = asyncio.get_running_loop().create_task(self._shared_call(group))
        self._shared_calls.add(task)
        task.add_done_callback(self._shared_calls.discard)

    async def _shared_call(self, group: list[_Waiting]) -> None:
        try:
            # The shared call's deadline is its most patient caller's; each keeps its own above.
            vectors = await self._call([t for w in group for t in w.texts], max(w.timeout for w in group))
        except BaseException as exc:  # every caller gets an error of its own, and none is left waiting
            if isinstance(exc, TierUnavailable):
                reason, detail = exc.reason, exc.detail
            else:
                reason, detail = "error", f"shared Embed call: {type(exc).__name__}: {exc}"
            for w in group:
                if not w.future.done():
                    w.future.set_exception(TierUnavailable(self.component, reason, detail))
            if not isinstance(exc, Exception):
                raise  # cancelled (the loop closing): the task ends as cancelled
            return
        start = 0
        for w in group:
            if not w.future.done():
                w.future.set_result(vectors[start:start + len(w.texts)])
            start += len(w.texts)

    async def _call(self, texts: list[str], timeout: float) -> list[list[float]]:
        self._in_flight += 1
        try:
            reply = await self._stub.Embed(embedder_pb2.EmbedRequest(texts=texts), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _to_tier_unavailable(self.component, exc) from exc
        finally:
            self._in_flight -= 1
        if len(reply.vectors) != len(texts):
            raise TierUnavailable(self.component, "error", f"{len(reply.vectors)} vectors for {len(texts)} texts")
        self._report(reply.timing)
        return [list(v.values) for v in reply.vectors]


class GrpcVerifier(_GrpcModelClient):
    """``Verifier`` over gRPC: all candidates in one Score call."""

    component = "verifier"
    grpc_service = verifier_pb2.DESCRIPTOR.services_by_name["VerifierService"].full_name

    def __init__(self, target: str, *, on_timing: TimingCallback | None = None, check_timeout: float = 2.0) -> None:
        super().__init__(target, on_timing=on_timing, check_timeout=check_timeout)
        self._stub = verifier_pb2_grpc.VerifierServiceStub(self._channel)

    @classmethod
    def from_settings(cls, settings: ModelClientSettings, *, target: str | None = None,
                      on_timing: TimingCallback | None = None) -> "GrpcVerifier":
        target = target or settings.verifier_url
        if not target:
            raise ValueError("REFLEX_VERIFIER_URL is unset and no target was given")
        return cls(target, on_timing=on_timing, check_timeout=settings.verifier_timeout_ms / 1000)

    async def score(
        self, query: str, candidates: Sequence[str], cosines: Sequence[float] | None = None, *, timeout: float,
        min_score: float = 0.0,
    ) -> list[float]:
        if cosines is not None and len(cosines) != len(candidates):
            raise ValueError(f"{len(cosines)} cosines for {len(candidates)} candidates")
        try:
            reply = await self._stub.Score(
                verifier_pb2.ScoreRequest(query=query, candidates=list(candidates), cosines=list(cosines or ()),
                                          min_score=min_score),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise _to_tier_unavailable(self.component, exc) from exc
        if len(reply.scores) != len(candidates):
            raise TierUnavailable(self.component, "error", f"{len(reply.scores)} scores for {len(candidates)} candidates")
        self._report(reply.timing)
        return list(reply.scores)
