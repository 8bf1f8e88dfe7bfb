"""``reflex up``: the cluster, rehearsed on one machine.

Starts N embedder and M verifier replicas and one gateway as separate processes on loopback,
wired the way the Helm chart wires pods: each model replica is ``reflex embedder`` /
``reflex verifier`` on its own port, and the gateway's REFLEX_EMBEDDER_URL / REFLEX_VERIFIER_URL
list every replica (``ipv4:127.0.0.1:p1,127.0.0.1:p2``), over which its gRPC client spreads
calls with ``round_robin`` just as it does over a headless Service's pod IPs. L1 is Redis when
REFLEX_REDIS_URL is set (every child inherits the environment), else the gateway's own LRU.

Order, as in Kubernetes: model replicas first, each waited for until grpc.health.v1 reports
SERVING (the model loaded and warmed); then the gateway, waited for on /healthz. On SIGINT or
SIGTERM the gateway is stopped first (it drains its requests while the models still answer),
then the model replicas; anything still alive after its grace period is killed.

A child that dies is logged with its exit code and restarted on the same port, after a backoff
that doubles up to 30 s (reset once it is healthy again). That is what the kubelet does to a
crashed container, and it is what makes the rehearsal useful: the gateway keeps running and its
channel reconnects to the restarted replica by itself. A replica that never became healthy is
not retried: a model that fails to load will fail again, so ``reflex up`` stops everything and
exits 1 rather than loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reflex.settings import ServeSettings
from reflex.signals import stop_event

log = logging.getLogger("reflex.up")

LOOPBACK = "127.0.0.1"
# Restart backoff of a crashed child: first delay, doubled per consecutive crash, capped.
RESTART_BACKOFF_MIN_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
# How often readiness is polled while a child starts: cheap calls, and start-up takes seconds.
POLL_INTERVAL_S = 0.25


class StartupFailed(RuntimeError):
    """A child exited or stayed unhealthy before it ever became healthy."""


def free_port(host: str = LOOPBACK) -> int:
    """A port that is free now. Another process could take it before the child binds it; the
    child then fails to start and ``reflex up`` says so, which is acceptable on a dev machine."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def grpc_target(ports: list[int]) -> str:
    """Every replica in one gRPC target; the gateway's client balances over them (round_robin)."""
    return "ipv4:" + ",".join(f"{LOOPBACK}:{p}" for p in ports)


def torch_threads_per_replica(settings: ServeSettings, replicas: int) -> int:
    """Split the cores between the model processes: each torch would otherwise size its pool to
    every core, and N pools fighting over the same cores are slower than one."""
    if settings.models.model.torch_threads is not None:
        return settings.models.model.torch_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, replicas))


@dataclass
class Child:
    """One supervised process: a model replica or the gateway."""

    name: str  # "embedder-0", "verifier-1", "gateway"
    subcommand: str  # the `reflex` subcommand it runs
    port: int
    env: dict[str, str]  # REFLEX_* overrides on top of the inherited environment
    grace_s: float  # how long it may drain after SIGTERM before it is killed
    metrics_port: int | None = None
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    healthy_once: bool = False
    state: str = "new"  # new, starting, ready, backoff, stopped
    _log_pump: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def spawn(self) -> None:
        # The environment is passed through untouched (PATH, HF_HUB_OFFLINE, CUDA_VISIBLE_DEVICES,
        # REFLEX_* ...); configuration is still read only by the child's own Settings.
        env = {**os.environ, **self.env}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "commands.cli", self.subcommand,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Its own session: a Ctrl-C in the terminal reaches only the supervisor, which stops
            # the children in order (gateway first) instead of all of them at once.
            start_new_session=True,
        )
        self.state = "starting"
        self._log_pump = asyncio.create_task(self._pump_logs(self.process), name=f"{self.name}-logs")
        log.info("%s: started (pid %d, port %d)", self.name, self.process.pid, self.port)

    async def _pump_logs(self, process: asyncio.subprocess.Process) -> None:
        """Copy the child's output to ours, each line prefixed with the replica's name (and
        keep reading, or a chatty child would block on a full pipe)."""
        assert process.stdout is not None
        prefix = f"[{self.name}] ".encode()
        while line := await process.stdout.readline():
            sys.stderr.buffer.write(prefix + line)
            sys.stderr.flush()

    async def is_healthy(self) -> bool:
        raise NotImplementedError

    async def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.alive:
                code = self.process.returncode if self.process is not None else None
                raise StartupFailed(f"{self.name} exited with code {code} before it was healthy")
            if await self.is_healthy():
                self.state = "ready"
                self.healthy_once = True
                return
            if time.monotonic() > deadline:
                raise StartupFailed(f"{self.name} was not healthy within {timeout_s:.0f} s")
            await asyncio.sleep(POLL_INTERVAL_S)

    async def stop(self) -> None:
        """SIGTERM, wait out the grace period, then SIGKILL."""
        self.state = "stopped"
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=self.grace_s + 5.0)
            except asyncio.TimeoutError:
                log.warning("%s: still running %.0f s after SIGTERM; killing it", self.name, self.grace_s + 5.0)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._log_pump is not None:
            # At EOF once the process is gone, unless a grandchild inherited the pipe.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._log_pump, timeout=5.0)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "port": self.port, "state": self.state, "restarts": self.restarts}


@dataclass
class ModelReplica(Child):
    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    async def is_healthy(self) -> bool:
        # The overall ("") status: the server sets it SERVING only once the model is warm.
        async with grpc.aio.insecure_channel(self.target) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1.0
                )
            except grpc.aio.AioRpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["target"] = self.target
        if self.metrics_port is not None:
            out["metrics_url"] = f"http://{LOOPBACK}:{self.metrics_port}/metrics"
        return out


@dataclass
class GatewayChild(Child):
    bind_addr: str = LOOPBACK
    http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        host = LOOPBACK if self.bind_addr in ("0.0.0.0", "::") else self.bind_addr
        return f"http://{host}:{self.port}"

    async def is_healthy(self) -> bool:
        assert self.http is not None
        try:
            async with self.http.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=1.0)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["url"] = self.url
        return out


class Topology:
    """Starts, supervises and stops the children of one ``reflex up``."""

    def __init__(
        self,
        settings: ServeSettings,
        *,
        embedders: int,
        verifiers: int,
        port: int,
        restart: bool = True,
        startup_timeout_s: float = 300.0,
        layout_file: Path | None = None,
    ) -> None:
        self.settings = settings
        self.restart = restart
        self.startup_timeout_s = startup_timeout_s
        self.layout_file = layout_file
        threads = torch_threads_per_replica(settings, embedders + verifiers)
        self.embedders = [self._model("embedder", i, threads) for i in range(embedders)]
        self.verifiers = [self._model("verifier", i, threads) for i in range(verifiers)]
        gateway_port = port or free_port()
        self.gateway = GatewayChild(
            name="gateway",
            subcommand="gateway",
            port=gateway_port,
            env={
                "REFLEX_PORT": str(gateway_port),
                "REFLEX_BIND_ADDR": settings.gateway.http.bind_addr,
                "REFLEX_EMBEDDER_URL": grpc_target([r.port for r in self.embedders]),
                "REFLEX_VERIFIER_URL": grpc_target([r.port for r in self.verifiers]),
            },
            grace_s=settings.gateway.http.shutdown_grace_secs,
            bind_addr=settings.gateway.http.bind_addr,
        )
        self._stopping = False
        self._supervisors: list[asyncio.Task[None]] = []
        self._failed = asyncio.Event()
        self.failure: str | None = None

    def _model(self, kind: str, index: int, threads: int) -> ModelReplica:
        port, metrics_port = free_port(), free_port()
        return ModelReplica(
            name=f"{kind}-{index}",
            subcommand=kind,
            port=port,
            metrics_port=metrics_port,
            env={
                "REFLEX_GRPC_BIND_ADDR": LOOPBACK,
                "REFLEX_GRPC_PORT": str(port),
                "REFLEX_METRICS_PORT": str(metrics_port),
                "REFLEX_TORCH_THREADS": str(threads),
            },
            grace_s=self.settings.models.grpc.shutdown_grace_secs,
        )

    @property
    def children(self) -> list[Child]:
        return [*self.embedders, *self.verifiers, self.gateway]

    # ------------------------------------------------------------------ layout file
    def layout(self) -> dict[str, Any]:
        return {
            "ready": all(c.state == "ready" for c in self.children),
            "gateway": self.gateway.describe(),
            "embedders": [r.describe() for r in self.embedders],
            "verifiers": [r.describe() for r in self.verifiers],
            "embedder_url": self.gateway.env["REFLEX_EMBEDDER_URL"],
            "verifier_url": self.gateway.env["REFLEX_VERIFIER_URL"],
        }

    def write_layout(self) -> None:
        """Write where everything runs (ports, pids, states) for scripts and tests; atomically,
        so a reader never sees half a file."""
        if self.layout_file is None:
            return
        tmp = self.layout_file.with_name(self.layout_file.name + ".tmp")
        tmp.write_text(json.dumps(self.layout(), indent=2))
        tmp.replace(self.layout_file)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Model replicas (concurrently), healthy; then the gateway, healthy. Raises StartupFailed."""
        self.gateway.http = aiohttp.ClientSession()
        models = [*self.embedders, *self.verifiers]
        for replica in models:
            await replica.spawn()
        self.write_layout()
        await asyncio.gather(*(r.wait_healthy(self.startup_timeout_s) for r in models))
        log.info("model replicas ready: embedders %s, verifiers %s",
                 self.gateway.env["REFLEX_EMBEDDER_URL"], self.gateway.env["REFLEX_VERIFIER_URL"])
        await self.gateway.spawn()
        self.write_layout()
        await self.gateway.wait_healthy(self.startup_timeout_s)
        self._supervisors = [
            asyncio.create_task(self._supervise(c), name=f"supervise-{c.name}") for c in self.children
        ]
        self.write_layout()
        log.info("reflex up: gateway on %s (%d embedder, %d verifier replicas)",
                 self.gateway.url, len(self.embedders), len(self.verifiers))

    async def _supervise(self, child: Child) -> None:
        backoff = RESTART_BACKOFF_MIN_S
        while not self._stopping:
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping:
                return
            log.error("%s (pid %d) exited with code %s", child.name, child.process.pid, code)
            if not self.restart:
                child.state = "stopped"
                self.write_layout()
                return
            child.state = "backoff"
            self.write_layout()
            log.info("%s: restarting in %.0f s on the same port %d", child.name, backoff, child.port)
            await asyncio.sleep(backoff)
            if self._stopping:
                return
            child.restarts += 1
            await child.spawn()
            self.write_layout()
            try:
                await child.wait_healthy(self.startup_timeout_s)
            except StartupFailed as exc:
                log.error("%s: %s", child.name, exc)
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)
                if child.alive:  # started but never healthy: treat it as a crash
                    await child.stop()
                continue
            backoff = RESTART_BACKOFF_MIN_S
            self.write_layout()
            log.info("%s: healthy again (restart %d)", child.name, child.restarts)

    async def stop(self) -> None:
        """Gateway first (it drains while the models still answer), then the model replicas."""
        self._stopping = True
        for task in self._supervisors:
            task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        await self.gateway.stop()
        await asyncio.gather(*(r.stop() for r in [*self.embedders, *self.verifiers]))
        if self.gateway.http is not None:
            await self.gateway.http.close()
        self.write_layout()
        log.info("reflex up: all processes stopped")


async def run(topology: Topology, stop: asyncio.Event | None = None) -> int:
    """Start the topology, then serve until ``stop`` is set (by default: SIGTERM or SIGINT)."""
    stop = stop or stop_event()
    try:
        starting = asyncio.create_task(topology.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # a signal during start-up
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return 0
        stopping.cancel()
        try:
            starting.result()
        except StartupFailed as exc:
            log.error("reflex up: %s; stopping everything", exc)
            return 1
        await stop.wait()
        log.info("reflex up: signal received, stopping (gateway first)")
        return 0
    finally:
        await topology.stop()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str], settings: ServeSettings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="reflex up",
        description="Run the gateway, N embedder and M verifier replicas as separate processes on "
        "loopback: the single-machine rehearsal of the Kubernetes deployment. Every REFLEX_* "
        "variable reaches every process; L1 is Redis when REFLEX_REDIS_URL is set.",
    )
    parser.add_argument("--embedders", type=_positive, default=2, help="embedder replicas (default 2)")
    parser.add_argument("--verifiers", type=_positive, default=1, help="verifier replicas (default 1)")
    parser.add_argument(
        "--port", type=int, default=settings.gateway.http.port,
        help=f"gateway HTTP port (default REFLEX_PORT, {settings.gateway.http.port}; 0 picks a free one)",
    )
    parser.add_argument(
        "--no-restart", dest="restart", action="store_false",
        help="leave a crashed child down instead of restarting it (the gateway serves misses meanwhile)",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=300.0,
        help="seconds each process may take to become healthy (model load included; default 300)",
    )
    parser.add_argument(
        "--layout-file", type=Path, default=None,
        help="write the topology (ports, pids, states, metrics URLs) here as JSON, kept current",
    )
    return parser.parse_args(argv)


def main(argv: list[str], settings: ServeSettings) -> int:
    args = parse_args(argv, settings)
    settings.log_effective(log)
    topology = Topology(
        settings,
        embedders=args.embedders,
        verifiers=args.verifiers,
        port=args.port,
        restart=args.restart,
        startup_timeout_s=args.startup_timeout,
        layout_file=args.layout_file,
    )

    return asyncio.run(run(topology))
