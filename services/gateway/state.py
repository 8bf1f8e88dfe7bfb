"""What the handlers share within one app: typed keys and the per-app state object.

No module-level mutable state: everything lives on the ``web.Application``, so several
gateways can run in one process (tests, ``reflex serve``) without sharing anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from reflex.entry import CachedEntry
from reflex.settings import GatewaySettings
from services.gateway.cascade import Cascade, SemanticTiers
from services.gateway.hit_format import HitAccounting
from services.gateway.l1 import L1Cache, RedisL1
from services.gateway.metrics import GatewayMetrics
from services.gateway.repeats import ParseOnce
from services.gateway.request_head import RequestHead, RequestHeads
from services.gateway.upstream import Upstream

log = logging.getLogger("reflex.gateway")


@dataclass(eq=False)
class GatewayState:
    settings: GatewaySettings
    cascade: Cascade
    upstream: Upstream
    metrics: GatewayMetrics
    # the paths of the cacheable endpoints, one per protocol (request metrics count these)
    cacheable_paths: frozenset[str] = frozenset()
    inflight: int = 0
    draining: bool = False
    # what each request asks, read once per distinct body and deciding headers (request_head.py)
    heads: RequestHeads = field(init=False)
    # exact hits' response bodies, by (request head, entry): each pair is the same bytes every
    # time (handlers._serve_hit); the value holds both objects, so their ids stay theirs
    hit_bodies: ParseOnce[tuple[RequestHead, CachedEntry, bytes, HitAccounting]] = field(default_factory=ParseOnce)
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.heads = RequestHeads(max_question_chars=self.settings.l2.max_question_chars,
                                  default_format=self.settings.cache.response_format)
        self.metrics.pending_writes.set_function(lambda: len(self._background))  # read at scrape time
        near = self.cascade.l1.near if isinstance(self.cascade.l1, RedisL1) else None
        if near is not None:
            self.metrics.l1_near_entries.set_function(lambda: len(near))
            self.metrics.l1_near_live.set_function(lambda: float(near.live))
            self.metrics.l1_near_hits.set_function(lambda: float(near.hits))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a cache write in the background; shutdown awaits it (see ``drain``)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background cache write failed", exc_info=task.exception())

    async def settle(self) -> None:
        """Wait until no request is in flight and no cache write is pending.

        A client may have read a stream's last byte before its handler spawned the write;
        tests and benchmarks call this between "the answer arrived" and "look it up again".
        """
        while self.inflight or self._background:
            if self._background:
                await asyncio.wait(set(self._background))
            else:
                await asyncio.sleep(0.001)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for the background writes pending now (and any they spawn)."""
        while self._background:
            done, pending = await asyncio.wait(set(self._background), timeout=timeout)
            if pending:
                log.warning("%d cache writes unfinished at shutdown; cancelled", len(pending))
                for task in pending:
                    task.cancel()
                return


METRICS = web.AppKey("metrics", GatewayMetrics)
UPSTREAM = web.AppKey("upstream", Upstream)  # type: ignore[type-abstract]
L1 = web.AppKey("l1", L1Cache)  # type: ignore[type-abstract]
TIERS = web.AppKey("tiers", SemanticTiers | None)  # type: ignore[arg-type]
STATE = web.AppKey("state", GatewayState)
