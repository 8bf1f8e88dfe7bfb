"""A replica's near cache in front of the Redis L1, kept true by Redis's own invalidations.

Why: an L1 hit from Redis pays a round trip and redis-py's command path, even with one MGET
per loop turn (RedisL1.get): 12% more instructions per hit than the in-process L1 under load,
and a network wait for every lone request (README, Performance). Entries are read far
more often than written, and a hot entry is read by every replica, so each replica keeps a
bounded copy of the entries it read recently.

How it stays true: Redis's client-side caching, in broadcasting mode. One connection holds
``CLIENT TRACKING ON BCAST PREFIX reflex:l1: REDIRECT <listener>``, and the listener, a second
connection subscribed to ``__redis__:invalidate``, then receives the key of every write,
delete, expiry and eviction of an L1 entry, by any replica, and drops this replica's copy.
(RESP2 with a redirect: redis-py's asyncio client does not read RESP3 push messages, and its
own client-side cache is for the synchronous client only.) The rules that keep a copy from
outliving its entry:

- Only values read from Redis are kept, and only when no invalidation of their key arrived
  while the read was on its way: each read key carries a token that an invalidation takes
  away (a write just after Redis answered the read would otherwise leave the old value here).
- A replica's own writes and deletes drop its copy at once, before their invalidation comes
  back: an admin invalidation or a refresh holds on this replica as soon as it returns.
- While the listener is not subscribed and tracking (at start, after a dropped connection),
  nothing is served from here, and everything kept is dropped: an invalidation lost in the
  gap could leave a stale copy. The tracking connection is pinged every ``check_secs``; if
  it was closed alone (CLIENT KILL), Redis stops sending invalidations without telling the
  listener, and the ping is what notices.
- Each copy also lives at most ``max_age_secs``, whatever happens: the bound on staleness if
  an invalidation is lost in a way neither check sees. Other replicas may serve an entry a
  write replaced for as long as its invalidation takes to reach them (one network trip).

A Redis that refuses CLIENT ID or CLIENT TRACKING (before 6.0, or an offering that renames or
forbids CLIENT) leaves the near cache off for good, with one warning; L1 works as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import redis.asyncio as aioredis
from cachetools import TTLCache
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

log = logging.getLogger("reflex.gateway.l1")

INVALIDATION_CHANNEL = "__redis__:invalidate"


class NearCache:
    """A bounded, invalidated copy of Redis L1 values (event loop only: no lock)."""

    def __init__(self, url: str, prefix: str, *, max_bytes: int, max_age_secs: float, timeout_secs: float,
                 retry_secs: float, check_secs: float = 1.0) -> None:
        self._url = url
        self._prefix = prefix.encode()
        self._max_bytes = max_bytes
        self._timeout = timeout_secs
        self._retry_secs = max(retry_secs, 0.1)
        self._check_secs = check_secs
        self._entries: TTLCache[str, bytes] = TTLCache(maxsize=max_bytes, ttl=max_age_secs, getsizeof=len)
        # key -> the token of the newest read of it in flight (see the module docstring)
        self._pending: dict[str, object] = {}
        self._live = False
        self._was_live = False  # went live since the last failure (for logging it once)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.hits = 0  # lookups answered from here

    @property
    def live(self) -> bool:
        """True while invalidations arrive: only then is anything kept or served."""
        return self._live

    def __len__(self) -> int:
        return len(self._entries)

    def start(self) -> None:
        """Start the listener (idempotent; needs the running loop)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._listen())

    # ------------------------------------------------------------------ reads and writes
    def get(self, key: str) -> bytes | None:
        if not self._live:
            return None
        value = self._entries.get(key)
        if value is not None:
            self.hits += 1  # read at scrape time (reflex_gateway_l1_near_cache_hits_total)
        return value

    def reading(self, keys: Iterable[str]) -> object:
        """Mark ``keys`` as being read from Redis; the token goes to ``offer``."""
        token = object()
        if self._live:
            for key in keys:
                self._pending[key] = token
        return token

    def offer(self, key: str, value: bytes | None, token: object) -> None:
        """What Redis answered for ``key``: kept unless an invalidation overtook the read."""
        if self._pending.get(key) is not token:
            return
        del self._pending[key]
        if value is not None and self._live and len(value) <= self._max_bytes:
            self._entries[key] = value

    def abandon(self, keys: Iterable[str], token: object) -> None:
        for key in keys:
            if self._pending.get(key) is token:
                del self._pending[key]

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)
        self._pending.pop(key, None)

    def _invalidate(self, keys: list[bytes] | None) -> None:
        if keys is None:  # FLUSHDB / FLUSHALL: everything goes
            self._clear()
            return
        for raw in keys:
            if raw.startswith(self._prefix):
                self.drop(raw[len(self._prefix):].decode())

    def _clear(self) -> None:
        self._entries.clear()
        self._pending.clear()

    # ------------------------------------------------------------------ the listener
    async def _listen(self) -> None:
        while not self._closed:
            try:
                await self._track()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                if self._was_live:  # logged once per outage, not once per retry
                    log.warning("L1 near cache off: Redis invalidations stopped (%s); retrying", type(exc).__name__)
            except Exception:  # noqa: BLE001 - a bug of ours: the near cache stays off, L1 goes on
                log.exception("L1 near cache listener failed; retrying")
            self._was_live = False  # (_track left the copy empty and not live, however it ended)
            await asyncio.sleep(self._retry_secs)

    def _client(self) -> aioredis.Redis:
        # No client-side retries: a reconnect would quietly change the listener's client id,
        # and the tracking redirect would point at a connection that no longer exists. RESP2:
        # a RESP3 listener gets invalidations as push frames that redis-py's PubSub drops.
        return aioredis.Redis.from_url(self._url, socket_timeout=self._timeout,
                                       socket_connect_timeout=self._timeout, retry=Retry(NoBackoff(), 0),
                                       retry_on_timeout=False, health_check_interval=0,
                                       single_connection_client=True, protocol=2)

    async def _track(self) -> None:
        listener, tracker = self._client(), self._client()
        pubsub = listener.pubsub()
        try:
            await pubsub.connect()
            assert pubsub.connection is not None
            try:
                await pubsub.connection.send_command("CLIENT", "ID")
                listener_id = int(await pubsub.connection.read_response())
                # Subscribed first, tracking second: no invalidation can fall between the two.
                await pubsub.subscribe(INVALIDATION_CHANNEL)
                if await pubsub.get_message(timeout=self._timeout) is None:  # the confirmation
                    raise TimeoutError("no subscribe confirmation")
                await tracker.execute_command("CLIENT", "TRACKING", "ON", "REDIRECT", listener_id, "BCAST",
                                              "PREFIX", self._prefix)
            except ResponseError as exc:
                log.warning("L1 near cache off: Redis refused client-side caching (%s)", exc)
                self._closed = True  # a server that refuses it will not start to: no retries
                return
            self._live = self._was_live = True
            log.info("L1 near cache on (up to %d bytes per replica)", self._max_bytes)
            loop = asyncio.get_running_loop()
            checked = loop.time()
            while not self._closed:
                message = await pubsub.get_message(timeout=self._check_secs)  # None: nothing came
                if message is not None and message.get("type") == "message":
                    self._invalidate(message.get("data"))
                if loop.time() - checked >= self._check_secs:
                    await tracker.ping()  # the tracking connection is still there (module docstring)
                    checked = loop.time()
        finally:
            self._live = False
            self._clear()
            await pubsub.aclose()
            await listener.aclose()
            await tracker.aclose()

    async def close(self) -> None:
        self._closed = True
        self._live = False
        self._clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
