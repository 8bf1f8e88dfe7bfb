"""``reflex gateway``: the HTTP gateway alone (Kubernetes), and the runner ``reflex serve`` reuses."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from aiohttp import web

from reflex.settings import GatewaySettings
from reflex.signals import stop_event
from reflex.tiers import Embedder, L2Store, ModelClientFactory, Verifier
from services.gateway.app import create_app
from services.gateway.http_server import GatewayRunner
from services.gateway.lifecycle import LIFECYCLE
from services.gateway.state import STATE

log = logging.getLogger("reflex.gateway")

# Idle keep-alive connections are closed after this long: longer than the agents' pauses
# between calls in one task (so they reuse connections), short enough that abandoned sockets
# do not pile up.
KEEPALIVE_TIMEOUT_SECS = 75.0


class GatewayServer:
    """One gateway app bound to a TCP port; ``stop`` drains in-flight requests within
    ``shutdown_grace_secs`` and then the pending cache writes."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        embedder: Embedder | None = None,
        verifier: Verifier | None = None,
        l2: L2Store | None = None,
        model_clients: ModelClientFactory | None = None,
    ) -> None:
        self.settings = settings
        self.app = create_app(settings, embedder=embedder, verifier=verifier, l2=l2, model_clients=model_clients)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.http.bind_addr}:{self.port}"

    async def start(self) -> int:
        self._runner = GatewayRunner(
            self.app,
            header_read_timeout=self.settings.http.header_read_timeout_secs,
            # a caller that hangs up cancels its handler, and with it the upstream call
            handler_cancellation=True,
            # an idle keep-alive connection is closed after this (aiohttp's default is an hour)
            keepalive_timeout=KEEPALIVE_TIMEOUT_SECS,
            shutdown_timeout=self.settings.http.shutdown_grace_secs,
            # per-request access lines cost a measurable share of an L1 hit; /metrics counts requests
            access_log=None,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http.bind_addr, self.settings.http.port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("gateway listening on %s", self.url)
        return self.port

    async def wait_for_stop(self, stop: asyncio.Event) -> str:
        """Until ``stop`` is set (a signal) or the gateway asks to stop by itself (idle timeout);
        returns why, for the log line."""
        own = self.app[LIFECYCLE].stop_requested
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(own.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return self.app[LIFECYCLE].stop_reason if own.is_set() and not stop.is_set() else "signal received"

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


async def _run_until_signalled(settings: GatewaySettings) -> None:
    stop = stop_event()
    server = GatewayServer(settings)
    await server.start()
    reason = await server.wait_for_stop(stop)
    # then: in-flight requests drain, pending cache writes finish, and a snapshot is written when
    # a location is configured (services/gateway/lifecycle.py)
    log.info("%s: draining for up to %.0f s", reason, settings.http.shutdown_grace_secs)
    await server.stop()


def main(argv: list[str], settings: GatewaySettings) -> int:
    parser = argparse.ArgumentParser(
        prog="reflex gateway", description="The Reflex HTTP gateway alone; configured by REFLEX_* variables."
    )
    parser.parse_args(argv)
    settings.log_effective(log)
    asyncio.run(_run_until_signalled(settings))
    return 0
