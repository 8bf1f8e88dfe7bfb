"""HTTP handlers: the OpenAI-compatible surface plus health, readiness and metrics."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from reflex.entry import CachedEntry
from reflex.settings import ResponseFormat
from services.gateway import hit_format
from services.gateway.cascade import CacheStatus, Lookup, fresh_completion_id
from services.gateway.errors import ErrorKind, GatewayError, envelope, error_response
from services.gateway.keys import RequestKeys, api_key_from_headers, tenant_id
from services.gateway.protocol import parse_chat_request, wants_stream, wants_usage_chunk
from services.gateway.state import STATE, GatewayState
from services.gateway.streaming import StreamAssembler, is_cacheable, replay_events
from services.gateway.upstream import passed_back_headers

log = logging.getLogger("reflex.gateway")

# How long /ready waits for each backend's live check: a probe must answer well inside
# Kubernetes' default 1 s timeout only when healthy; a hung backend is reported, not waited on.
READY_CHECK_TIMEOUT_SECS = 0.8


class CacheMode(StrEnum):
    """What a request lets the cache do (Cache-Control, or X-Reflex-Cache)."""

    LOOKUP = "lookup"  # look up, and store a fresh answer
    REFRESH = "refresh"  # skip the lookup, store the fresh answer
    NO_STORE = "no-store"  # neither look up nor store


def cache_mode(headers: Mapping[str, str]) -> CacheMode:
    reflex = headers.get("X-Reflex-Cache", "").strip().lower()
    if reflex:
        if reflex == "bypass":
            return CacheMode.NO_STORE
        if reflex == "refresh":
            return CacheMode.REFRESH
        raise GatewayError(
            ErrorKind.INVALID_REQUEST, "X-Reflex-Cache must be 'bypass' or 'refresh'", param="X-Reflex-Cache"
        )
    directives = {d.strip().lower() for d in headers.get("Cache-Control", "").split(",")}
    if "no-store" in directives:
        return CacheMode.NO_STORE
    if "no-cache" in directives:
        return CacheMode.REFRESH
    return CacheMode.LOOKUP


def requested_format(headers: Mapping[str, str], default: ResponseFormat) -> ResponseFormat:
    value = headers.get("X-Reflex-Format", "").strip().lower()
    if not value:
        return default
    try:
        return ResponseFormat(value)
    except ValueError:
        raise GatewayError(
            ErrorKind.INVALID_REQUEST, "X-Reflex-Format must be 'tauq' or 'raw'", param="X-Reflex-Format"
        ) from None


@dataclass(slots=True)
class ChatCall:
    """One chat-completions request on its way through the gateway: what was asked, what the
    cache found, and the X-Reflex-* headers the answer will carry, whichever way it is produced."""

    request: web.Request
    state: GatewayState
    body: bytes  # forwarded upstream byte for byte
    chat: dict[str, Any]  # the parsed body
    keys: RequestKeys
    mode: CacheMode
    format: ResponseFormat
    lookup: Lookup
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def stream(self) -> bool:
        return wants_stream(self.chat)

    @property
    def store(self) -> bool:
        return self.mode is not CacheMode.NO_STORE

    def store_answer(self, completion: dict[str, Any]) -> None:
        """Write a complete answer in the background (the caller never waits for the cache)."""
        if self.store:
            self.state.spawn(self.state.cascade.store_answer(self.keys, completion, self.lookup.vector))


# ---------------------------------------------------------------------------- chat completions


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise GatewayError(
            ErrorKind.BODY_TOO_LARGE, f"request body exceeds {state.settings.http.max_body_bytes} bytes"
        ) from None
    chat = parse_chat_request(body)
    mode = cache_mode(request.headers)
    fmt = requested_format(request.headers, state.settings.cache.response_format)
    tenant = tenant_id(api_key_from_headers(request.headers))
    keys = RequestKeys.of(tenant, chat)
    if mode is CacheMode.LOOKUP:
        lookup = await state.cascade.lookup(keys)
    else:
        lookup = Lookup(CacheStatus.BYPASS)
    call = ChatCall(request, state, body, chat, keys, mode, fmt, lookup,
                    headers={"X-Reflex-Tenant": tenant, "X-Reflex-Lookup-Ms": f"{lookup.lookup_ms:.3f}"})
    if lookup.entry is not None:
        return await _serve_hit(call, lookup.entry)
    call.headers["X-Reflex-Status"] = lookup.status
    try:
        return await _forward(call)
    except GatewayError as exc:
        # upstream unreachable or timed out: still tell the caller what the cache did
        return error_response(exc.kind, exc.message, param=exc.param, headers=call.headers)


async def _serve_hit(call: ChatCall, entry: CachedEntry) -> web.StreamResponse:
    state, lookup, headers = call.state, call.lookup, call.headers
    completion = entry.completion
    if lookup.status is CacheStatus.HIT_L3:
        # The cached answer was produced for another request: present it as an answer to
        # this one (its own model name, a new id), never as a copy of someone's response.
        completion = copy.deepcopy(completion)
        completion["model"] = call.chat["model"]
        completion["id"] = fresh_completion_id()
        completion["created"] = int(time.time())
        headers["X-Reflex-Similarity"] = f"{lookup.similarity:.4f}"
        headers["X-Reflex-Verifier-Score"] = f"{lookup.verifier_score:.4f}"
    try:
        served, accounting = hit_format.format_hit(
            completion, question=entry.question, request=call.chat, requested=call.format, stream=call.stream
        )
    except Exception:  # noqa: BLE001
        # A presentation bug must not turn a good hit into a 500: serve the answer as cached.
        log.exception("formatting a hit failed; serving it raw")
        usage = completion.get("usage") or {}
        saved = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
        served, accounting = completion, hit_format.HitAccounting(ResponseFormat.RAW, saved, 0, "format_error")
    state.metrics.hits.labels(lookup.status, accounting.format.value, accounting.reason).inc()
    headers["X-Reflex-Status"] = lookup.status
    headers["X-Reflex-Tokens-Saved"] = str(accounting.tokens_saved)
    headers["X-Reflex-Format-Delta"] = str(accounting.format_delta)
    state.metrics.tokens_saved.labels(call.keys.tenant).inc(max(accounting.tokens_saved, 0))
    if accounting.format_delta:
        direction = "added" if accounting.format_delta > 0 else "saved"
        state.metrics.format_delta.labels(call.keys.tenant, direction).inc(abs(accounting.format_delta))
    if lookup.status is CacheStatus.HIT_L3:
        state.spawn(state.cascade.promote(call.keys, entry))
    if not call.stream:
        return web.json_response(served, dumps=lambda o: orjson.dumps(o).decode(), headers=headers)
    response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(call.request)
    await response.write(b"".join(replay_events(served, include_usage=wants_usage_chunk(call.chat))))
    await response.write_eof()
    return response


async def _forward(call: ChatCall) -> web.StreamResponse:
    """The one place a chat request goes upstream; the answer is relayed as it arrives."""
    started = time.perf_counter()
    async with call.state.upstream.open("POST", "/chat/completions", body=call.body, headers=call.request.headers) as reply:
        if call.stream:
            response = await _relay_stream(call, reply, started)
        else:
            response = await _relay_body(call, reply)
    call.state.metrics.upstream_seconds.labels(str(call.stream).lower()).observe(time.perf_counter() - started)
    return response


async def _relay_body(call: ChatCall, reply: aiohttp.ClientResponse) -> web.StreamResponse:
    data = await reply.read()
    content_type = reply.headers.get("Content-Type", "application/json")
    response = web.Response(
        status=reply.status, body=data,
        headers={**passed_back_headers(reply.headers), **call.headers, "Content-Type": content_type},
    )
    completion = _cacheable_body(reply.status, data, call.state) if call.store else None
    # Send first, then write the cache entry: the caller never waits for the cache. The
    # write is spawned even if the caller hangs up while the last bytes go out (the
    # handler is then cancelled): the provider's answer was complete and is paid for.
    try:
        await response.prepare(call.request)
        await response.write_eof()
    finally:
        if completion is not None:
            call.store_answer(completion)
    return response


def _cacheable_body(status: int, data: bytes, state: GatewayState) -> dict[str, Any] | None:
    if status != 200:
        state.metrics.not_cached.labels("status").inc()
        return None
    try:
        completion = orjson.loads(data)
    except orjson.JSONDecodeError:
        state.metrics.not_cached.labels("unreadable").inc()
        return None
    if not isinstance(completion, dict) or not is_cacheable(completion):
        state.metrics.not_cached.labels("finish_reason").inc()
        return None
    return completion


async def _relay_stream(call: ChatCall, reply: aiohttp.ClientResponse, started: float) -> web.StreamResponse:
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
    assembler = StreamAssembler()
    decided = False
    try:
        async for data in reply.iter_chunks():
            assembler.feed(data)
            try:
                await response.write(data)
            finally:
                # SDKs hang up as soon as they read [DONE], which cancels this handler
                # (handler_cancellation): decide about caching before that can happen.
                if assembler.done and not decided:
                    decided = True
                    _store_stream(call, assembler)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # Headers are gone already: tell the client in-band (the OpenAI SDK raises on an
        # error event) and end the stream without [DONE]. Nothing is cached.
        log.warning("upstream stream broke after %.1f s: %s", time.perf_counter() - started, type(exc).__name__)
        state.metrics.not_cached.labels("interrupted").inc()
        kind = ErrorKind.UPSTREAM_TIMEOUT if isinstance(exc, TimeoutError) else ErrorKind.UPSTREAM_UNREACHABLE
        await response.write(b"data: " + envelope(kind, "the upstream stream was interrupted") + b"\n\n")
        await response.write_eof()
        return response
    if not assembler.done:
        # the upstream closed cleanly but without [DONE]: a truncated answer
        state.metrics.not_cached.labels("incomplete_stream").inc()
    await response.write_eof()
    return response


def _store_stream(call: ChatCall, assembler: StreamAssembler) -> None:
    if not call.store:
        return
    completion = assembler.completion()
    if completion is None:
        call.state.metrics.not_cached.labels("finish_reason").inc()
    else:
        call.store_answer(completion)


# ---------------------------------------------------------------------------- other endpoints


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    async with state.upstream.open("GET", "/models", body=None, headers=request.headers) as reply:
        data = await reply.read()
        return web.Response(
            status=reply.status,
            body=data,
            headers={**passed_back_headers(reply.headers), "Content-Type": reply.headers.get("Content-Type", "application/json")},
        )


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
    return web.Response(body=state.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


# ---------------------------------------------------------------------------- middlewares


@web.middleware
async def count_requests(request: web.Request, handler):  # type: ignore[no-untyped-def]
    response = await handler(request)
    if request.path == "/v1/chat/completions":
        request.app[STATE].metrics.requests.labels(
            response.headers.get("X-Reflex-Status", "error"), str(response.status)
        ).inc()
    return response


@web.middleware
async def bound_inflight(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Fail fast past REFLEX_MAX_INFLIGHT instead of queueing without bound."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    state = request.app[STATE]
    if state.inflight >= state.settings.http.max_inflight:
        return error_response(
            ErrorKind.OVERLOADED, "the gateway is at its concurrency limit; retry shortly", headers={"Retry-After": "1"}
        )
    state.inflight += 1
    try:
        return await handler(request)
    finally:
        state.inflight -= 1


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)

