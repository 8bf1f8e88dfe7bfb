"""The grpc.aio server lifecycle shared by the embedder and the verifier.

Order matters, for Kubernetes as much as for tests:
1. bind the port and start serving ``grpc.health.v1`` as NOT_SERVING (the service's own RPCs
   answer UNAVAILABLE), so probes get an answer while the model loads;
2. load the model on a worker thread, start the batcher, run one warm-up batch through it;
3. only then turn SERVING;
4. while serving, health follows the forward pass: after ``unhealthy_after_failures``
   consecutive failed batches (a CUDA fault, say) NOT_SERVING, so round_robin clients that
   check health stop sending calls; the next successful batch turns it SERVING again. Those
   clients send nothing while it is NOT_SERVING, so the server probes itself with the warm-up
   batch every ``recovery_probe_s`` to find out when it works again. Calls that still arrive
   (clients without health checking, or every replica failing) are served as usual;
5. on stop (SIGTERM): ``enter_graceful_shutdown()`` (NOT_SERVING, so balancers stop sending),
   ``server.stop(grace)`` (in-flight calls drain; the batcher keeps running meanwhile), then
   close the batcher.

Errors become gRPC codes in one interceptor (services.model_server.interceptors), installed
here when the server is built; servicers only raise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from reflex import keepalive
from reflex.settings import ModelServiceSettings, ModelSettings
from reflex.signals import stop_event
from services.model_server.batching import DynamicBatcher, ModelBackend
from services.model_server.errors import NotServing
from services.model_server.interceptors import ErrorMappingInterceptor
from services.model_server.metrics import ModelMetrics

log = logging.getLogger("reflex.grpc")

BackendT = TypeVar("BackendT", bound=ModelBackend[Any, Any])

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# While NOT_SERVING after failed forward passes, how often the server runs its warm-up batch
# to see whether the model works again: one tiny batch per interval is negligible load, and a
# replica back in service within seconds is what round_robin needs.
RECOVERY_PROBE_S = 5.0


@dataclass(frozen=True)
class ServiceSpec(Generic[BackendT]):
    """What differs between the model services; everything else is in ModelServer."""

    name: str  # "embedder" / "verifier": metric prefix, thread names, log lines
    grpc_service: str  # full proto name, e.g. "reflex.embedder.v1.EmbedderService" (health key)
    default_port: int
    # Adds the service's servicer to the server; the servicer reaches the model through the
    # ModelServer it is given (the batcher only exists once the model is loaded).
    register: Callable[[grpc.aio.Server, "ModelServer[BackendT]"], None]
    # Blocking; runs on a worker thread.
    load_backend: Callable[[ModelServiceSettings], BackendT]
    # Items of the warm-up batch, run through the real batcher before SERVING.
    warmup_items: Sequence[Any]


class ModelServer(Generic[BackendT]):
    # The idle-ping interval this server permits (reflex/keepalive.py); tests shorten it.
    keepalive_ping_interval_ms: int = keepalive.PING_INTERVAL_MS

    def __init__(
        self,
        spec: ServiceSpec[BackendT],
        settings: ModelServiceSettings,
        *,
        load_backend: Callable[[ModelServiceSettings], BackendT] | None = None,
        recovery_probe_s: float | None = RECOVERY_PROBE_S,
    ) -> None:
        """``recovery_probe_s``: seconds between self-probes while NOT_SERVING after failed
        forward passes; None: no probes (only a client's call can turn it SERVING again)."""
        self.spec = spec
        self.settings = settings
        self.metrics = ModelMetrics(spec.name, max_batch_size=settings.batching.max_batch_size)
        self.health = health.aio.HealthServicer()
        self.backend: BackendT | None = None
        self.batcher: DynamicBatcher[Any, Any] | None = None
        self.port: int | None = None
        self._load_backend = load_backend or spec.load_backend
        self._server: grpc.aio.Server | None = None
        self._ready: asyncio.Task[None] | None = None
        self._warm = False  # set once the warm-up batch succeeded, together with health SERVING
        self._stopped = False
        # Health after warm-up follows the forward passes (see _forward_pass_done).
        self._recovery_probe_s = recovery_probe_s
        self._failed_in_a_row = 0
        self._failing = False  # NOT_SERVING because of failed forward passes
        self._failing_changed = asyncio.Event()
        self._health_follower: asyncio.Task[None] | None = None

    @property
    def registry(self) -> Any:
        return self.metrics.registry

    @property
    def serving(self) -> bool:
        return self._warm and not self._stopped

    @property
    def reports_serving(self) -> bool:
        """What grpc.health.v1 says, or is about to (its follower publishes each flip): SERVING
        once warm, not while forward passes fail in a row, not once stopping."""
        return self.serving and not self._failing

    # ------------------------------------------------------------------ lifecycle
    async def start(self, port: int) -> int:
        """Bind (port 0 picks a free one), serve health as NOT_SERVING, start loading. Returns the port."""
        # so_reuseport off: a second server on a taken port must fail to start, not silently
        # split the traffic with the first one.
        server = grpc.aio.server(
            interceptors=[ErrorMappingInterceptor(self.spec.name, self.spec.grpc_service, self.metrics)],
            # keepalive: permit the gateways' idle pings (reflex/keepalive.py), or the server
            # answers them with GOAWAY "too_many_pings" and drops the connection
            options=[("grpc.so_reuseport", 0), *keepalive.server_options(self.keepalive_ping_interval_ms)],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.spec.register(server, self)
        address = f"{self.settings.grpc.bind_addr}:{port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises (older versions returned 0)
            raise OSError(f"{self.spec.name}: cannot bind {address}: {exc}") from exc
        if not bound:
            raise OSError(f"{self.spec.name}: cannot bind {address}")
        for service in ("", self.spec.grpc_service):
            await self.health.set(service, NOT_SERVING)
        await server.start()
        self._server, self.port = server, bound
        self._ready = asyncio.create_task(self._load_and_warm(), name=f"{self.spec.name}-load")
        log.info("%s: listening on %s:%d (NOT_SERVING until the model is warm)", self.spec.name,
                 self.settings.grpc.bind_addr, bound)
        return bound

    async def wait_ready(self) -> None:
        """Return once SERVING; raise what loading raised if it failed."""
        if self._ready is None:
            raise RuntimeError("start() first")
        await asyncio.shield(self._ready)

    async def stop(self, grace: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.grpc.shutdown_grace_secs if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
            try:
                await self._ready
            except (asyncio.CancelledError, Exception):  # loading failed or was cut short: stopping anyway
                log.debug("%s: load task ended while stopping", self.spec.name, exc_info=True)
        # After the load task has ended: it is what starts the follower.
        if self._health_follower is not None:
            # Nothing left to publish (health is NOT_SERVING for good); stops a probe, too.
            self._health_follower.cancel()
            try:
                await self._health_follower
            except asyncio.CancelledError:
                pass
        if self.batcher is not None:
            await self.batcher.close()
        log.info("%s: stopped", self.spec.name)

    async def _load_and_warm(self) -> None:
        settings = self.settings
        try:
            backend = await asyncio.to_thread(self._load_backend, settings)
            batcher: DynamicBatcher[Any, Any] = DynamicBatcher(
                backend,
                max_batch_size=settings.batching.max_batch_size,
                max_wait_s=settings.batching.max_batch_wait_ms / 1000.0,
                max_batch_tokens=settings.batching.max_batch_tokens,
                max_queue=settings.batching.max_queue,
                metrics=self.metrics,
                name=self.spec.name,
                on_forward_pass=self._forward_pass_done,
            )
            await batcher.start()
            self.backend = backend
            self.batcher = batcher
            # A backend's own warm-up (compiling, recording CUDA graphs) runs on the model
            # thread, where its forward passes will run, before the warm-up batch.
            warm_up = getattr(backend, "warm_up", None)
            if callable(warm_up):
                await batcher.run_on_model_thread(warm_up)
            await batcher.submit(list(self.spec.warmup_items))
        except Exception:
            log.exception("%s: loading or warming the model failed; staying NOT_SERVING", self.spec.name)
            raise
        self._warm = True
        await self._set_health(SERVING)
        self._health_follower = asyncio.create_task(self._follow_forward_passes(),
                                                    name=f"{self.spec.name}-health")
        log.info("%s: model loaded and warm, SERVING", self.spec.name)

    async def _set_health(self, status: Any) -> None:
        # "" too: client-side health checking (the gateway's healthCheckConfig) watches "".
        for service in ("", self.spec.grpc_service):
            await self.health.set(service, status)

    # ------------------------------------------------------------------ health follows the model
    def _forward_pass_done(self, ok: bool) -> None:
        """The batcher's on_forward_pass: count failed batches in a row, flag the transitions.

        Synchronous, on the event loop, inside the batcher's model stage; publishing is left to
        _follow_forward_passes so a slow health watcher can never hold up the next batch.
        """
        if not self._warm or self._stopped:
            return  # the warm-up decides SERVING on its own; a stopping server stays NOT_SERVING
        if ok:
            self._failed_in_a_row = 0
            if self._failing:
                self._failing = False
                self._failing_changed.set()
                log.warning("%s: a forward pass succeeded again, SERVING", self.spec.name)
            return
        self._failed_in_a_row += 1
        limit = self.settings.grpc.unhealthy_after_failures
        if not self._failing and self._failed_in_a_row >= limit:
            self._failing = True
            self._failing_changed.set()
            log.error("%s: %d forward passes failed in a row, NOT_SERVING until one succeeds",
                      self.spec.name, self._failed_in_a_row)

    async def _follow_forward_passes(self) -> None:
        """Publish each flip of ``_failing`` to grpc.health.v1; probe while failing."""
        published_failing = False
        while True:
            if self._failing and self._recovery_probe_s is not None:
                try:
                    await asyncio.wait_for(self._failing_changed.wait(), self._recovery_probe_s)
                except TimeoutError:
                    await self._probe()
                    continue
            else:
                await self._failing_changed.wait()
            self._failing_changed.clear()
            failing = self._failing
            if failing != published_failing:
                await self._set_health(NOT_SERVING if failing else SERVING)
                published_failing = failing

    async def _probe(self) -> None:
        # Clients that check health send nothing to a NOT_SERVING replica, so without this a
        # replica whose model works again would never see the success that brings it back.
        assert self.batcher is not None
        try:
            await self.batcher.submit(list(self.spec.warmup_items))
        except Exception as exc:  # already logged and counted by the batcher
            log.debug("%s: recovery probe failed: %s", self.spec.name, exc)

    # ------------------------------------------------------------------ for servicers
    def require_batcher(self) -> DynamicBatcher[Any, Any]:
        if self.batcher is None or not self.serving:
            raise NotServing(f"{self.spec.name} is not serving (model loading, or shutting down)")
        return self.batcher

    def require_backend(self) -> BackendT:
        if self.backend is None:
            raise NotServing(f"{self.spec.name} model is not loaded yet")
        return self.backend


async def run_until_signalled(spec: ServiceSpec[Any], settings: ModelServiceSettings) -> int:
    """`reflex embedder` / `reflex verifier`: serve until SIGTERM or SIGINT, then drain and exit."""
    server: ModelServer[Any] = ModelServer(spec, settings)
    port = settings.grpc.port if settings.grpc.port is not None else spec.default_port
    await server.start(port)
    metrics_http = None
    if settings.grpc.metrics_port is not None:
        metrics_http, _ = start_http_server(settings.grpc.metrics_port, addr=settings.grpc.bind_addr,
                                            registry=server.registry)
        log.info("%s: metrics on http://%s:%d/metrics", spec.name, settings.grpc.bind_addr,
                 metrics_http.server_port)
    stop = stop_event()
    stop_wait = asyncio.create_task(stop.wait())
    ready = asyncio.create_task(server.wait_ready())
    exit_code = 0
    try:
        await asyncio.wait({stop_wait, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and ready.exception() is not None:
            exit_code = 1  # the model did not load: exit so the orchestrator restarts / reports us
        else:
            await stop_wait
            log.info("%s: signal received, draining for up to %.1fs", spec.name, settings.grpc.shutdown_grace_secs)
    finally:
        for task in (stop_wait, ready):
            task.cancel()
        await server.stop()
        if metrics_http is not None:
            metrics_http.shutdown()
    return exit_code


async def start_model_server(
    spec: ServiceSpec[BackendT],
    settings: ModelServiceSettings,
    port: int = 0,
    *,
    wait_ready: bool = True,
    load_backend: Callable[[ModelServiceSettings], BackendT] | None = None,
    recovery_probe_s: float | None = RECOVERY_PROBE_S,
) -> ModelServer[BackendT]:
    """Start a model service on the running loop; the handle has ``.port`` and ``.stop(grace)``.

    ``wait_ready=False`` returns as soon as the port is bound (health NOT_SERVING while the
    model loads); ``load_backend`` replaces the model loader (e.g. to share one loaded model
    between replicas in a test); ``recovery_probe_s`` as in ModelServer.
    """
    server = ModelServer(spec, settings, load_backend=load_backend, recovery_probe_s=recovery_probe_s)
    await server.start(port)
    if wait_ready:
        try:
            await server.wait_ready()
        except BaseException:
            await server.stop(grace=0)
            raise
    return server


def run_model_service_cli(
    spec: ServiceSpec[Any],
    settings: ModelServiceSettings,
    argv: list[str],
    *,
    description: str,
    resolve_model_path: Callable[[ModelSettings], Any],
) -> int:
    """`reflex embedder` / `reflex verifier`: parse (no options), check the model, serve."""
    argparse.ArgumentParser(prog=f"reflex {spec.name}", description=description).parse_args(argv)
    settings.log_effective()
    try:
        resolve_model_path(settings.model)  # a missing model is a one-line error, before any port is bound
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return 2
    return asyncio.run(run_until_signalled(spec, settings))
