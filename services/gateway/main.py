"""``reflex gateway``: the HTTP gateway alone (Kubernetes), and the runner ``reflex serve`` reuses."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from reflex.config import Settings
from services.gateway.app import create_app
from services.gateway.state import STATE
from services.gateway.tiers import Embedder, L2Store, Verifier

log = logging.getLogger("reflex.gateway")


class GatewayServer:
    """One gateway app bound to a TCP port; ``stop`` drains in-flight requests within
    ``shutdown_grace_secs`` and then the pending cache writes."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        verifier: Verifier | None = None,
        l2: L2Store | None = None,
    ) -> None:
        self.settings = settings
        self.app = create_app(settings, embedder=embedder, verifier=verifier, l2=l2)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.bind_addr}:{self.port}"

    async def start(self) -> int:
        self._runner = web.AppRunner(
            self.app,
            # a caller that hangs up cancels its handler, and with it the upstream call
            handler_cancellation=True,
            shutdown_timeout=self.settings.shutdown_grace_secs,
            # per-request access lines cost a measurable share of an L1 hit; /metrics counts requests
            access_log=None,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.bind_addr, self.settings.port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("gateway listening on %s", self.url)
        return self.port

    async def flush(self) -> None:
        """Wait for in-flight requests and their cache writes (tests and benchmarks use it)."""
        await self.app[STATE].settle()

    async def stop(self) -> None:
        if self._runner is None:
            return
        with contextlib.suppress(KeyError):
            self.app[STATE].draining = True  # /ready answers 503 while we drain
        await self._runner.cleanup()
        self._runner = None


async def serve_gateway(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    verifier: Verifier | None = None,
    l2: L2Store | None = None,
    ready_event: asyncio.Event | None = None,
) -> None:
    """Run the gateway until cancelled, then drain gracefully. Injected tiers stay the
    caller's to close (``reflex serve`` runs them in-process)."""
    server = GatewayServer(settings, embedder=embedder, verifier=verifier, l2=l2)
    await server.start()
    try:
        if ready_event is not None:
            ready_event.set()
        await asyncio.Event().wait()
    finally:
        await server.stop()


async def _run_until_signalled(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = GatewayServer(settings)
    await server.start()
    await stop.wait()
    log.info("signal received: draining for up to %.0f s", settings.shutdown_grace_secs)
    await server.stop()


def main(argv: list[str], settings: Settings) -> int:
    parser = argparse.ArgumentParser(
        prog="reflex gateway", description="The Reflex HTTP gateway alone; configured by REFLEX_* variables."
    )
    parser.parse_args(argv)
    settings.log_effective(log)
    asyncio.run(_run_until_signalled(settings))
    return 0
