"""The admin API (``/admin/v1/``), tenant self-service (``/v1/reflex/cache``), and the middleware
that feeds per-tenant stats and the idle clock. ``add_admin_routes(app)`` wires all of it, and the
lifecycle (hydrate, dehydrate, idle), into an app built by ``app.create_app``.

Admin routes exist only when REFLEX_ADMIN_TOKEN is set (otherwise 404, as for any unknown path);
every call must send ``Authorization: Bearer <token>``, compared in constant time (401 without
it). Tenant self-service needs no admin token: the caller's own API key names the tenant (as on
a chat request), and only that tenant's entries are touched; another tenant's entry id is "not
found", so ids cannot be probed. Keyless callers share the anonymous tenant and may not delete
it. Each removal takes the entry out of L1 and L2 together (``Cascade.delete_entry``/``invalidate``).

Endpoints:

- ``GET /admin/v1/stats`` and ``GET /admin/v1/tenants/{tenant}/stats``: per tenant, live entries
  and bytes stored in each tier, requests and hits by tier and tokens saved since this gateway
  started;
- ``DELETE /admin/v1/entries/{id}``: one entry (and the copies of its answer, see delete_entry);
- ``POST /admin/v1/invalidate`` with any of ``tenant``, ``model``, ``context_hash``,
  ``older_than_secs``, ``question_contains`` (all given must match; at least one, or
  ``{"all": true}``);
- ``POST /admin/v1/snapshots`` (optionally ``{"url": ...}``) writes a snapshot now, while serving;
  ``GET /admin/v1/snapshots`` lists those at the configured location;
- ``DELETE /v1/reflex/cache`` and ``DELETE /v1/reflex/cache/{id}``: the caller's own entries.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from reflex.tiers import TierUnavailable
from services.gateway.keys import ANONYMOUS_TENANT, api_key_from_headers, tenant_id
from services.gateway.lifecycle import LIFECYCLE, lifecycle_ctx
from services.gateway.selection import Selection
from services.gateway.snapshot import SnapshotError
from services.gateway.state import STATE

log = logging.getLogger("reflex.gateway.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class TenantUsage:
    """What each tenant's requests did since this gateway started (stats; the Prometheus
    counters carry the same, for dashboards)."""

    # tenant -> status -> count; a defaultdict, so that counting (every API request) builds no
    # Counter that setdefault would throw away for a tenant already seen
    requests: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    tokens_saved: Counter[str] = field(default_factory=Counter)

    def record(self, tenant: str, status: str, tokens_saved: int) -> None:
        self.requests[tenant][status] += 1
        if tokens_saved > 0:
            self.tokens_saved[tenant] += tokens_saved


USAGE = web.AppKey("tenant_usage", TenantUsage)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(status: int, message: str, kind: str, code: str) -> web.Response:
    # the gateway's error envelope (OpenAI's), so every client parses admin errors the same way
    return _json({"error": {"message": message, "type": kind, "param": None, "code": code}}, status)


# ---------------------------------------------------------------------------- usage
def record_usage(app: web.Application, response: web.StreamResponse) -> None:
    """Per-tenant request counts, from the X-Reflex-Status / X-Reflex-Tenant /
    X-Reflex-Tokens-Saved headers an API answer carries (the gateway's middleware calls it
    for every response; others carry no tenant and are not counted)."""
    headers = response.headers
    status, tenant = headers.get("X-Reflex-Status"), headers.get("X-Reflex-Tenant")
    if not (status and tenant):
        return
    # plain str: the handlers may set a StrEnum, and these become JSON keys and label values
    status, tenant = str(status), str(tenant)
    try:
        saved = int(headers.get("X-Reflex-Tokens-Saved", "0"))
    except ValueError:
        saved = 0
    app[USAGE].record(tenant, status, saved)
    metrics = app[STATE].metrics
    metrics.tenant_requests.labels(metrics.tenant(tenant), status).inc()


# ---------------------------------------------------------------------------- admin API
def _authorized(request: web.Request) -> bool:
    token = request.app[STATE].settings.admin.admin_token
    if token is None:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode())


def admin_only(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        if not _authorized(request):
            return _error(401, "admin API: send Authorization: Bearer <REFLEX_ADMIN_TOKEN>", "authentication_error",
                          "invalid_admin_token")
        return await handler(request)

    return guarded


def tier_errors(handler: Handler) -> Handler:
    """A store that is down makes an admin call fail with 503 naming it, not a 500: the caller
    should retry, and nothing was half-removed that a retry would not finish."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except TierUnavailable as exc:
            return _error(503, f"{exc}; retry when it is back", "service_unavailable_error", "tier_unavailable")

    return guarded


def _forget_tallies(request: web.Request, tenant: str | None = None) -> None:
    tiers = request.app[STATE].cascade.tiers
    caps = getattr(tiers.l2, "caps", None) if tiers is not None else None
    if caps is not None:
        caps.forget(tenant)


async def _stats(request: web.Request, tenant: str | None) -> web.Response:
    stored = await request.app[STATE].cascade.stored_usage(tenant)
    usage = request.app[USAGE]
    tenants = set(stored) | (set(usage.requests) if tenant is None else {tenant} & set(usage.requests))
    if tenant is not None:
        tenants.add(tenant)
    out = {}
    for t in sorted(tenants):
        s = stored.get(t, {"l1_entries": 0, "l1_bytes": 0, "l2_entries": 0, "l2_bytes": 0})
        requests = usage.requests.get(t, Counter())
        out[t] = {
            "entries": {"l1": s["l1_entries"], "l2": s["l2_entries"]},
            "bytes": {"l1": s["l1_bytes"], "l2": s["l2_bytes"]},
            "requests": dict(requests),
            "hits": {status: n for status, n in requests.items() if status.startswith("hit")},
            "tokens_saved": usage.tokens_saved.get(t, 0),
        }
    return _json({"tenants": out})


async def all_stats(request: web.Request) -> web.Response:
    return await _stats(request, None)


async def tenant_stats(request: web.Request) -> web.Response:
    return await _stats(request, request.match_info["tenant"])


async def delete_entry(request: web.Request) -> web.Response:
    removed = await request.app[STATE].cascade.delete_entry(request.match_info["entry_id"])
    if removed is None:
        return _error(404, "no such entry", "not_found_error", "entry_not_found")
    _forget_tallies(request)
    return _json({"deleted": request.match_info["entry_id"], "removed": removed})


_CRITERIA = {"tenant": str, "model": str, "context_hash": str, "older_than_secs": (int, float), "question_contains": str}


async def invalidate(request: web.Request) -> web.Response:
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        return _error(400, "the body must be a JSON object", "invalid_request_error", "invalid_json")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object", "invalid_request_error", "invalid_json")
    unknown = set(body) - set(_CRITERIA) - {"all"}
    if unknown:
        return _error(400, f"unknown criteria {sorted(unknown)}; use {sorted(_CRITERIA)}", "invalid_request_error",
                      "invalid_criteria")
    for name, kind in _CRITERIA.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) or value == ""):
            return _error(400, f"{name} has the wrong type", "invalid_request_error", "invalid_criteria")
    selection = Selection(**{name: body.get(name) for name in _CRITERIA})
    if selection.empty and body.get("all") is not True:
        return _error(400, "name at least one criterion (or send {\"all\": true} to empty the whole cache)",
                      "invalid_request_error", "no_criteria")
    removed = await request.app[STATE].cascade.invalidate(selection)
    _forget_tallies(request)
    return _json({"removed": removed})


async def create_snapshot(request: web.Request) -> web.Response:
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        return _error(400, "the body must be a JSON object", "invalid_request_error", "invalid_json")
    url = body.get("url") if isinstance(body, dict) else None
    try:
        manifest = await request.app[LIFECYCLE].snapshot(request.app, url)
    except SnapshotError as exc:
        return _error(409, str(exc), "invalid_request_error", "snapshot_failed")
    return _json(orjson.loads(manifest.to_bytes()), 201)


async def list_snapshots(request: web.Request) -> web.Response:
    lifecycle = request.app[LIFECYCLE]
    try:
        location = lifecycle.location(request.query.get("url"))
    except SnapshotError as exc:
        return _error(409, str(exc), "invalid_request_error", "no_snapshot_location")
    manifests = await asyncio.to_thread(location.list)
    return _json({"location": location.url, "snapshots": [orjson.loads(m.to_bytes()) for m in manifests]})


# ---------------------------------------------------------------------------- tenant self-service
def _caller(request: web.Request) -> str | None:
    tenant = tenant_id(api_key_from_headers(request.headers))
    return None if tenant == ANONYMOUS_TENANT else tenant


async def delete_own_cache(request: web.Request) -> web.Response:
    tenant = _caller(request)
    if tenant is None:
        return _error(401, "send your API key: keyless callers share one tenant and cannot empty it",
                      "authentication_error", "missing_api_key")
    removed = await request.app[STATE].cascade.invalidate(Selection(tenant=tenant), reason="tenant")
    _forget_tallies(request, tenant)
    return _json({"tenant": tenant, "removed": removed})


async def delete_own_entry(request: web.Request) -> web.Response:
    tenant = _caller(request)
    if tenant is None:
        return _error(401, "send your API key", "authentication_error", "missing_api_key")
    entry_id = request.match_info["entry_id"]
    removed = await request.app[STATE].cascade.delete_entry(entry_id, tenant=tenant)
    if removed is None:
        return _error(404, "no such entry in your cache", "not_found_error", "entry_not_found")
    _forget_tallies(request, tenant)
    return _json({"tenant": tenant, "deleted": entry_id, "removed": removed})


def add_admin_routes(app: web.Application) -> None:
    """Self-service routes, the admin API (when REFLEX_ADMIN_TOKEN is set), the usage tally
    (filled by the gateway's middleware), and the lifecycle's cleanup_ctx (appended last: it
    starts after the state and stops first)."""
    app[USAGE] = TenantUsage()
    app.cleanup_ctx.append(lifecycle_ctx)
    app.router.add_delete("/v1/reflex/cache", tier_errors(delete_own_cache))
    app.router.add_delete("/v1/reflex/cache/{entry_id}", tier_errors(delete_own_entry))
    # Registered unconditionally, refused per request: the token is read from the app's settings,
    # and a disabled admin API answers 404 exactly like a path that does not exist.
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/admin/v1/stats", all_stats),
        ("GET", "/admin/v1/tenants/{tenant}/stats", tenant_stats),
        ("DELETE", "/admin/v1/entries/{entry_id}", delete_entry),
        ("POST", "/admin/v1/invalidate", invalidate),
        ("POST", "/admin/v1/snapshots", create_snapshot),
        ("GET", "/admin/v1/snapshots", list_snapshots),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _enabled_only(admin_only(tier_errors(handler))))


def _enabled_only(handler: Handler) -> Handler:
    async def maybe(request: web.Request) -> web.StreamResponse:
        if request.app[STATE].settings.admin.admin_token is None:
            raise web.HTTPNotFound()
        return await handler(request)

    return maybe
