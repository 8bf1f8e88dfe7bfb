"""HTTP handlers: one cacheable endpoint per protocol (built from its adapter), the
pass-through endpoints beside them, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from reflex.entry import CachedEntry
from reflex.settings import ResponseFormat
from services.gateway import hit_format
from services.gateway.cascade import OFFLOAD_BYTES, CacheStatus, Lookup
from services.gateway.errors import (
    ErrorDialect,
    ErrorKind,
    GatewayError,
    error_response,
)
from services.gateway.hit_format import HitAccounting
from services.gateway.keys import credential_from_headers
from services.gateway.protocols import ProtocolAdapter, StreamAssembly, UpstreamName
from services.gateway.request_head import CacheMode, RequestHead, native_credential
from services.gateway.state import STATE, GatewayState
from services.gateway.upstream import UpstreamReply, passed_back_headers

log = logging.getLogger("reflex.gateway")

# (X-Reflex-Status, HTTP status) of a streamed answer once its headers are sent, for the request
# counter when the client hangs up before the handler returns.
SENT_STATUS = web.RequestKey("sent_status", tuple)

# How long /ready waits for each backend's live check: a probe must answer well inside
# Kubernetes' default 1 s timeout only when healthy; a hung backend is reported, not waited on.
READY_CHECK_TIMEOUT_SECS = 0.8


@dataclass(slots=True)
class ApiCall:
    """One cacheable API request on its way through the gateway: the protocol it speaks, what
    was asked, what the cache found, and the X-Reflex-* headers the answer will carry,
    whichever way it is produced."""

    request: web.Request
    state: GatewayState
    protocol: ProtocolAdapter
    body: bytes  # forwarded upstream byte for byte
    head: RequestHead  # what it asks: parsed body, cache mode, format, credential, keys
    lookup: Lookup
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def stream(self) -> bool:
        return self.head.parsed.stream

    @property
    def store(self) -> bool:
        return self.head.mode is not CacheMode.NO_STORE and self.head.parsed.cacheable

    def store_answer(self, answer: dict[str, Any]) -> None:
        """Write a complete answer in the background (the caller never waits for the cache).

        An answer that calls tools goes to the exact tier only: the tool call is the model's
        decision for this exact context (the files, the state of the work), and a reworded
        request may well need another call or none, so it is never offered to L2."""
        if not self.store:
            return
        semantic = not self.protocol.calls_tools(answer)
        self.state.spawn(self.state.cascade.store_answer(self.head.keys, answer, self.lookup, semantic=semantic))


# ---------------------------------------------------------------------------- cacheable endpoints


def api_handler(protocol: ProtocolAdapter):  # type: ignore[no-untyped-def]
    """The handler of one protocol's cacheable endpoint (POST /v1/chat/completions, ...)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return await _handle(request, protocol)

    handle.__name__ = f"handle_{protocol.name.replace('.', '_')}"
    return handle


async def _handle(request: web.Request, protocol: ProtocolAdapter) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise GatewayError(
            ErrorKind.BODY_TOO_LARGE, f"request body exceeds {state.settings.http.max_body_bytes} bytes"
        ) from None
    head = state.heads.read(protocol, body, request.headers)
    parsed = head.parsed
    if head.question_too_long:
        # a caller's input, not a backend failure: exact tier only, before any gRPC call
        state.metrics.exact_only.labels("question_too_long").inc()
    if not parsed.cacheable:
        state.metrics.not_cached.labels(parsed.uncacheable_reason or "uncacheable").inc()
        lookup = Lookup(CacheStatus.BYPASS)
    elif head.mode is CacheMode.LOOKUP:
        lookup = await state.cascade.lookup(head.keys)
    else:
        lookup = Lookup(CacheStatus.BYPASS)
    call = ApiCall(request, state, protocol, body, head, lookup,
                   headers={"X-Reflex-Tenant": head.keys.tenant, "X-Reflex-Lookup-Ms": f"{lookup.lookup_ms:.3f}"})
    if lookup.entry is not None:
        return await _serve_hit(call, lookup.entry)
    call.headers["X-Reflex-Status"] = lookup.status
    try:
        return await _forward(call)
    except GatewayError as exc:
        # upstream unreachable or timed out: still tell the caller what the cache did
        return error_response(exc.kind, exc.message, param=exc.param, headers=call.headers, dialect=protocol.dialect)


async def _serve_hit(call: ApiCall, entry: CachedEntry) -> web.StreamResponse:
    state, lookup, headers, protocol = call.state, call.lookup, call.headers, call.protocol
    answer = entry.completion
    if lookup.status is CacheStatus.HIT_L3:
        # The cached answer was produced for another request: present it as an answer to
        # this one (its own model name, a new id), never as a copy of someone's response.
        answer = protocol.as_fresh_answer(answer, call.head.parsed)
        headers["X-Reflex-Similarity"] = f"{lookup.similarity:.4f}"
        headers["X-Reflex-Verifier-Score"] = f"{lookup.verifier_score:.4f}"
    large = lookup.entry_bytes >= OFFLOAD_BYTES
    body: bytes | None = None
    if lookup.status is CacheStatus.HIT_L1 and not call.stream and not large:
        # An exact hit: the same request (its head) hitting the same entry is the same bytes
        # every time, presented and serialized once (repeats.py). The kept value holds both
        # objects, so their ids name them for as long as it is kept.
        _, _, body, accounting = state.hit_bodies.get(
            (id(call.head), id(entry)), lookup.entry_bytes,
            lambda: (call.head, entry, *_exact_hit_body(call, answer, entry.question)))
    elif large:
        # a large answer is copied, counted and serialized off the event loop (see OFFLOAD_BYTES)
        served, accounting = await asyncio.to_thread(_presented, call, answer, entry.question)
    else:
        served, accounting = _presented(call, answer, entry.question)
    state.metrics.hits.labels(lookup.status, accounting.format.value, accounting.reason).inc()
    headers["X-Reflex-Status"] = lookup.status
    headers["X-Reflex-Entry-Id"] = entry.entry_id
    headers["X-Reflex-Tokens-Saved"] = str(accounting.tokens_saved)
    headers["X-Reflex-Format-Delta"] = str(accounting.format_delta)
    state.metrics.tokens_saved.labels(state.metrics.tenant(call.head.keys.tenant)).inc(max(accounting.tokens_saved, 0))
    if accounting.format_delta:
        direction = "added" if accounting.format_delta > 0 else "saved"
        state.metrics.format_delta.labels(state.metrics.tenant(call.head.keys.tenant), direction).inc(
            abs(accounting.format_delta))
    if lookup.status is CacheStatus.HIT_L3:
        state.spawn(state.cascade.promote(call.head.keys, entry))
    if not call.stream:
        if body is None:
            body = await asyncio.to_thread(orjson.dumps, served) if large else orjson.dumps(served)
        return web.Response(body=body, content_type="application/json", headers=headers)
    def events() -> bytes:
        return b"".join(protocol.replay(served, call.head.parsed))

    data = await asyncio.to_thread(events) if large else events()
    response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(call.request)
    call.request[SENT_STATUS] = (lookup.status.value, response.status)
    await response.write(data)
    await response.write_eof()
    return response


def _presented(call: ApiCall, answer: dict[str, Any], question: str | None) -> tuple[dict[str, Any], HitAccounting]:
    """The answer in the format to serve, with its token accounting (hit_format.present_hit)."""
    try:
        return hit_format.present_hit(call.protocol, answer, question=question, request=call.head.parsed,
                                      requested=call.head.format)
    except Exception:  # noqa: BLE001
        # A presentation bug must not turn a good hit into a 500: serve the answer as cached.
        log.exception("formatting a hit failed; serving it raw")
        return answer, HitAccounting(ResponseFormat.RAW, call.protocol.usage_tokens(answer), 0, "format_error")


def _exact_hit_body(call: ApiCall, answer: dict[str, Any], question: str | None) -> tuple[bytes, HitAccounting]:
    """An exact hit's response body and accounting, as kept for its repeats (_serve_hit)."""
    served, accounting = _presented(call, answer, question)
    return orjson.dumps(served), accounting


async def _forward(call: ApiCall) -> web.StreamResponse:
    """The one place a cacheable request goes upstream; the answer is relayed as it arrives."""
    started = time.perf_counter()
    protocol = call.protocol
    async with call.state.upstream.open(
        protocol.upstream, "POST", protocol.upstream_path, body=call.body, headers=call.request.headers,
        credential=call.head.credential, query=call.request.query_string, stream=call.stream,
    ) as reply:
        if call.stream:
            response = await _relay_stream(call, reply, started)
        else:
            response = await _relay_body(call, reply)
    call.state.metrics.upstream_seconds.labels(str(call.stream).lower()).observe(time.perf_counter() - started)
    return response


async def _relay_body(call: ApiCall, reply: UpstreamReply) -> web.StreamResponse:
    data = await reply.read()
    content_type = reply.headers.get("Content-Type", "application/json")
    response = web.Response(
        status=reply.status, body=data,
        headers={**passed_back_headers(reply.headers), **call.headers, "Content-Type": content_type},
    )
    answer = _cacheable_body(call, reply.status, data) if call.store else None
    # Send first, then write the cache entry: the caller never waits for the cache. The
    # write is spawned even if the caller hangs up while the last bytes go out (the
    # handler is then cancelled): the provider's answer was complete and is paid for.
    try:
        await response.prepare(call.request)
        await response.write_eof()
    finally:
        if answer is not None:
            call.store_answer(answer)
    return response


def _cacheable_body(call: ApiCall, status: int, data: bytes) -> dict[str, Any] | None:
    metrics = call.state.metrics
    if status != 200:
        metrics.not_cached.labels("status").inc()
        return None
    if len(data) > call.state.settings.cache.max_cacheable_bytes:
        metrics.not_cached.labels("too_large").inc()
        return None
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        metrics.not_cached.labels("unreadable").inc()
        return None
    if not isinstance(answer, dict) or not call.protocol.is_complete(answer):
        metrics.not_cached.labels("finish_reason").inc()
        return None
    return answer


async def _relay_stream(call: ApiCall, reply: UpstreamReply, started: float) -> web.StreamResponse:
    state = call.state
    content_type = reply.headers.get("Content-Type", "")
    if reply.status != 200 or not content_type.startswith("text/event-stream"):
        # an error (or a provider that ignored stream=true): pass it through as it is
        data = await reply.read()
        state.metrics.not_cached.labels("status" if reply.status != 200 else "not_a_stream").inc()
        return web.Response(
            status=reply.status,
            body=data,
            headers={**passed_back_headers(reply.headers), **call.headers,
                     "Content-Type": content_type or "application/json"},
        )
    response = web.StreamResponse(
        headers={
            **passed_back_headers(reply.headers),
            **call.headers,
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
        }
    )
    await response.prepare(call.request)
    call.request[SENT_STATUS] = (call.lookup.status.value, response.status)
    assembler = call.protocol.assembler()
    decided = False
    relayed, cap = 0, state.settings.cache.max_cacheable_bytes
    try:
        async for data in reply.iter_chunks():
            relayed += len(data)
            if relayed <= cap:
                _watch(assembler, data)
            elif not decided:
                # past the largest cacheable answer: relay the rest, assemble (and store) nothing
                decided = True
                state.metrics.not_cached.labels("too_large").inc()
            try:
                await response.write(data)
            finally:
                # SDKs hang up as soon as they read the end event, which cancels this handler
                # (handler_cancellation): decide about caching before that can happen.
                if assembler.done and not decided:
                    decided = True
                    _store_stream(call, assembler)
    except ConnectionError:
        # The caller hung up while we wrote (aiohttp's ClientConnectionResetError is also a
        # ClientError, so this clause must come first): no upstream failure, nothing more can
        # be written, and aiohttp closes the connection quietly once the handler returns.
        return response
    except (aiohttp.ClientError, TimeoutError, GatewayError) as exc:
        # Headers are gone already: tell the client in-band (the SDKs raise on an error
        # event) and end the stream without its end marker. Nothing is cached.
        log.warning("upstream stream broke after %.1f s: %s", time.perf_counter() - started, type(exc).__name__)
        state.metrics.not_cached.labels("interrupted").inc()
        timed_out = isinstance(exc, TimeoutError) or (
            isinstance(exc, GatewayError) and exc.kind is ErrorKind.UPSTREAM_TIMEOUT)
        kind = ErrorKind.UPSTREAM_TIMEOUT if timed_out else ErrorKind.UPSTREAM_UNREACHABLE
        await response.write(call.protocol.stream_error(kind, "the upstream stream was interrupted"))
        await response.write_eof()
        return response
    except asyncio.CancelledError:
        raise  # the caller left: nothing more can be written
    except Exception:  # noqa: BLE001
        # A bug of ours after the headers went out: a second response written into this one
        # would corrupt the stream, so end it in-band, like an upstream failure. Not cached.
        log.exception("relaying a stream failed")
        state.metrics.not_cached.labels("relay_error").inc()
        await response.write(call.protocol.stream_error(ErrorKind.INTERNAL, "the gateway failed relaying the stream"))
        await response.write_eof()
        return response
    if not assembler.done:
        # the upstream closed cleanly but without its end marker: a truncated answer
        state.metrics.not_cached.labels("incomplete_stream").inc()
    await response.write_eof()
    return response


def _watch(assembler: StreamAssembly, data: bytes) -> None:
    """Let the assembler see relayed bytes. Whatever it makes of them, the bytes are relayed:
    an assembler that cannot follow a stream only means the answer is not cached."""
    try:
        assembler.feed(data)
    except Exception:  # noqa: BLE001 - a watcher's bug must never break the client's stream
        log.exception("stream assembler failed; the answer will not be cached")
        assembler.broken = True  # type: ignore[attr-defined]


def _store_stream(call: ApiCall, assembler: StreamAssembly) -> None:
    if not call.store:
        return
    answer = assembler.answer()
    if answer is None:
        call.state.metrics.not_cached.labels("finish_reason").inc()
    else:
        call.store_answer(answer)


# ---------------------------------------------------------------------------- pass-through endpoints


def passthrough(provider: UpstreamName, upstream_prefix: str, dialect: ErrorDialect):  # type: ignore[no-untyped-def]
    """A handler that relays any method on a path below ``upstream_prefix`` to ``provider``
    untouched and never caches it (count_tokens, stored responses, model lists, ...)."""
    native = native_credential(provider)

    async def relay(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        tail = request.match_info.get("tail", "")
        path = upstream_prefix + (f"/{tail}" if tail else "")
        body = await request.read() if request.body_exists else None
        credential = credential_from_headers(request.headers, native=native)
        async with state.upstream.open(
            provider, request.method, path, body=body, headers=request.headers, credential=credential,
            query=request.query_string,
        ) as reply:
            content_type = reply.headers.get("Content-Type", "application/json")
            headers = {**passed_back_headers(reply.headers), "Content-Type": content_type, "X-Reflex-Status": "bypass"}
            if not content_type.startswith("text/event-stream"):
                return web.Response(status=reply.status, body=await reply.read(), headers=headers)
            response = web.StreamResponse(status=reply.status, headers=headers)
            await response.prepare(request)
            async for data in reply.iter_chunks():
                await response.write(data)
            await response.write_eof()
            return response

    relay.__name__ = f"passthrough_{provider.value}"
    return relay


async def list_models(request: web.Request) -> web.StreamResponse:
    """GET /v1/models: Anthropic's list for a caller that speaks Anthropic's headers, else OpenAI's."""
    if "anthropic-version" in request.headers:
        return await passthrough(UpstreamName.ANTHROPIC, "/v1/models", ErrorDialect.ANTHROPIC)(request)
    return await passthrough(UpstreamName.OPENAI, "/models", ErrorDialect.OPENAI)(request)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.draining:
        return web.json_response({"status": "draining", "failing": ["gateway"]}, status=503)
    components = await state.cascade.readiness(READY_CHECK_TIMEOUT_SECS)
    failing = sorted(name for name, result in components.items() if result != "ok")
    body = {"status": "ready" if not failing else "unavailable", "components": components, "failing": failing}
    return web.json_response(body, status=503 if failing else 200)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    token = state.settings.http.metrics_token
    if token is not None:
        # Prometheus sends it as `authorization: {credentials: ...}` (bearer) in a scrape config
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            return error_response(ErrorKind.UNAUTHORIZED, "metrics need the bearer token REFLEX_METRICS_TOKEN")
    return web.Response(body=state.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def add_routes(app: web.Application, protocols: tuple[ProtocolAdapter, ...]) -> None:
    for protocol in protocols:
        app.router.add_post(protocol.route, api_handler(protocol))
    # Everything else under the protocols' paths goes upstream untouched and is never cached.
    app.router.add_route("*", "/v1/messages/{tail:.+}", passthrough(UpstreamName.ANTHROPIC, "/v1/messages",
                                                                     ErrorDialect.ANTHROPIC))
    app.router.add_route("*", "/v1/responses/{tail:.+}", passthrough(UpstreamName.OPENAI, "/responses",
                                                                      ErrorDialect.OPENAI))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)

