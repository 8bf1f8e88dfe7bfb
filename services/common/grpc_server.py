"""The grpc.aio server lifecycle shared by the embedder and the verifier.

Order matters, for Kubernetes as much as for tests:
1. bind the port and start serving ``grpc.health.v1`` as NOT_SERVING (the service's own RPCs
   answer UNAVAILABLE), so probes get an answer while the model loads;
2. load the model on a worker thread, start the batcher, run one warm-up batch through it;
3. only then turn SERVING;
4. on stop (SIGTERM): ``enter_graceful_shutdown()`` (NOT_SERVING, so balancers stop sending),
   ``server.stop(grace)`` (in-flight calls drain; the batcher keeps running meanwhile), then
   close the batcher.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from reflex.config import Settings
from services.common.batching import DynamicBatcher, ModelBackend
from services.common.errors import ModelServiceError, NotServing, reason_for, status_for
from services.common.metrics import ModelMetrics

log = logging.getLogger("reflex.grpc")

BackendT = TypeVar("BackendT", bound=ModelBackend[Any, Any])
T = TypeVar("T")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


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
    load_backend: Callable[[Settings], BackendT]
    # Items of the warm-up batch, run through the real batcher before SERVING.
    warmup_items: Sequence[Any]


class ModelServer(Generic[BackendT]):
    def __init__(
        self,
        spec: ServiceSpec[BackendT],
        settings: Settings,
        *,
        load_backend: Callable[[Settings], BackendT] | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.metrics = ModelMetrics(spec.name, max_batch_size=settings.max_batch_size)
        self.health = health.aio.HealthServicer()
        self.backend: BackendT | None = None
        self.batcher: DynamicBatcher[Any, Any] | None = None
        self.port: int | None = None
        self._load_backend = load_backend or spec.load_backend
        self._server: grpc.aio.Server | None = None
        self._ready: asyncio.Task[None] | None = None
        self._warm = False  # set once the warm-up batch succeeded, together with health SERVING
        self._stopped = False

    @property
    def registry(self) -> Any:
        return self.metrics.registry

    @property
    def serving(self) -> bool:
        return self._warm and not self._stopped

    # ------------------------------------------------------------------ lifecycle
    async def start(self, port: int) -> int:
        """Bind (port 0 picks a free one), serve health as NOT_SERVING, start loading. Returns the port."""
        # so_reuseport off: a second server on a taken port must fail to start, not silently
        # split the traffic with the first one.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.spec.register(server, self)
        address = f"{self.settings.grpc_bind_addr}:{port}"
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
                 self.settings.grpc_bind_addr, bound)
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
        grace = self.settings.shutdown_grace_secs_grpc if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
            try:
                await self._ready
            except (asyncio.CancelledError, Exception):  # loading failed or was cut short: stopping anyway
                log.debug("%s: load task ended while stopping", self.spec.name, exc_info=True)
        if self.batcher is not None:
            await self.batcher.close()
        log.info("%s: stopped", self.spec.name)

    async def _load_and_warm(self) -> None:
        settings = self.settings
        try:
            backend = await asyncio.to_thread(self._load_backend, settings)
            batcher: DynamicBatcher[Any, Any] = DynamicBatcher(
                backend,
                max_batch_size=settings.max_batch_size,
                max_wait_s=settings.max_batch_wait_ms / 1000.0,
                max_batch_tokens=settings.max_batch_tokens,
                max_queue=settings.max_queue,
                metrics=self.metrics,
                name=self.spec.name,
            )
            await batcher.start()
            self.backend = backend
            self.batcher = batcher
            await batcher.submit(list(self.spec.warmup_items))
        except Exception:
            log.exception("%s: loading or warming the model failed; staying NOT_SERVING", self.spec.name)
            raise
        self._warm = True
        for service in ("", self.spec.grpc_service):
            await self.health.set(service, SERVING)
        log.info("%s: model loaded and warm, SERVING", self.spec.name)

    # ------------------------------------------------------------------ for servicers
    def require_batcher(self) -> DynamicBatcher[Any, Any]:
        if self.batcher is None or not self.serving:
            raise NotServing(f"{self.spec.name} is not serving (model loading, or shutting down)")
        return self.batcher

    def require_backend(self) -> BackendT:
        if self.backend is None:
            raise NotServing(f"{self.spec.name} model is not loaded yet")
        return self.backend

    async def handle(self, method: str, context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
        """Run one RPC body; map failures through the error table (services.common.errors)."""
        self.metrics.requests.labels(method).inc()
        try:
            return await call()
        except ModelServiceError as exc:
            self.metrics.failures.labels(reason_for(exc)).inc()
            code, message = status_for(exc), str(exc)
        except Exception as exc:  # a bug: INTERNAL, with the traceback in our log, not in the reply
            log.exception("%s.%s failed", self.spec.name, method)
            self.metrics.failures.labels(reason_for(exc)).inc()
            code, message = status_for(exc), f"internal error ({type(exc).__name__})"
        await context.abort(code, message)
        raise AssertionError("context.abort returned")  # abort always raises


async def run_until_signalled(spec: ServiceSpec[Any], settings: Settings) -> int:
    """`reflex embedder` / `reflex verifier`: serve until SIGTERM or SIGINT, then drain and exit."""
    server: ModelServer[Any] = ModelServer(spec, settings)
    port = settings.grpc_port if settings.grpc_port is not None else spec.default_port
    await server.start(port)
    metrics_http = None
    if settings.metrics_port is not None:
        metrics_http, _ = start_http_server(settings.metrics_port, addr=settings.grpc_bind_addr,
                                            registry=server.registry)
        log.info("%s: metrics on http://%s:%d/metrics", spec.name, settings.grpc_bind_addr,
                 metrics_http.server_port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stop_wait = asyncio.create_task(stop.wait())
    ready = asyncio.create_task(server.wait_ready())
    exit_code = 0
    try:
        await asyncio.wait({stop_wait, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and ready.exception() is not None:
            exit_code = 1  # the model did not load: exit so the orchestrator restarts / reports us
        else:
            await stop_wait
            log.info("%s: signal received, draining for up to %.1fs", spec.name, settings.shutdown_grace_secs_grpc)
    finally:
        for task in (stop_wait, ready):
            task.cancel()
        await server.stop()
        if metrics_http is not None:
            metrics_http.shutdown()
    return exit_code


async def start_model_server(
    spec: ServiceSpec[BackendT],
    settings: Settings,
    port: int = 0,
    *,
    wait_ready: bool = True,
    load_backend: Callable[[Settings], BackendT] | None = None,
) -> ModelServer[BackendT]:
    """Start a model service on the running loop; the handle has ``.port`` and ``.stop(grace)``.

    ``wait_ready=False`` returns as soon as the port is bound (health NOT_SERVING while the
    model loads); ``load_backend`` replaces the model loader (e.g. to share one loaded model
    between replicas in a test).
    """
    server = ModelServer(spec, settings, load_backend=load_backend)
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
    settings: Settings,
    argv: list[str],
    *,
    description: str,
    resolve_model_path: Callable[[Settings], Any],
) -> int:
    """`reflex embedder` / `reflex verifier`: parse (no options), check the model, serve."""
    argparse.ArgumentParser(prog=f"reflex {spec.name}", description=description).parse_args(argv)
    settings.log_effective()
    try:
        resolve_model_path(settings)  # a missing model is a one-line error, before any port is bound
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return 2
    return asyncio.run(run_until_signalled(spec, settings))
