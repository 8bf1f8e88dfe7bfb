"""What a cacheable request asks, as the gateway reads it before the lookup: the parsed body, the
cache mode, the hit format, the credential and the keys (``RequestHead``).

The head is a pure function of the body and a few headers: the credential (the tenant), the
cache mode, the hit format (``HEAD_HEADERS``) and those that change a protocol's answers (its
``answer_header_names``). An exact repeat, which is what an L1 hit usually is, sends the same
bytes and the same headers, so ``RequestHeads`` keeps the last heads read (repeats.py) and an
exact repeat skips parsing, validating, canonicalizing, the credential, the tenant hash and the
exact key (measured under load: about a fifth of the gateway's own work on an L1 hit).

Only the deciding headers are visible to the code that reads a head: nothing read from any
other header can be kept for a request that sent a different one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from blake3 import blake3
from multidict import CIMultiDict

from reflex.settings import ResponseFormat
from services.gateway.errors import ErrorKind, GatewayError
from services.gateway.keys import AUTHORIZATION, X_API_KEY, Credential, RequestKeys, credential_from_headers, tenant_id
from services.gateway.protocols import ParsedRequest, ProtocolAdapter, UpstreamName
from services.gateway.repeats import ParseOnce

# The request headers every protocol's head reads (each protocol adds its answer_header_names).
HEAD_HEADERS = (AUTHORIZATION, X_API_KEY, "X-Reflex-Cache", "Cache-Control", "X-Reflex-Format")


class CacheMode(StrEnum):
    """What a request lets the cache do (Cache-Control, or X-Reflex-Cache)."""

    LOOKUP = "lookup"  # look up, and store a fresh answer
    REFRESH = "refresh"  # skip the lookup, store the fresh answer
    NO_STORE = "no-store"  # neither look up nor store


def cache_mode(headers: Mapping[str, str]) -> CacheMode:
    reflex_header, cache_control = headers.get("X-Reflex-Cache"), headers.get("Cache-Control")
    if reflex_header is None and cache_control is None:
        return CacheMode.LOOKUP  # the usual request: neither header
    reflex = (reflex_header or "").strip().lower()
    if reflex:
        if reflex == "bypass":
            return CacheMode.NO_STORE
        if reflex == "refresh":
            return CacheMode.REFRESH
        raise GatewayError(
            ErrorKind.INVALID_REQUEST, "X-Reflex-Cache must be 'bypass' or 'refresh'", param="X-Reflex-Cache"
        )
    directives = {d.strip().lower() for d in (cache_control or "").split(",")}
    if "no-store" in directives:
        return CacheMode.NO_STORE
    if "no-cache" in directives:
        return CacheMode.REFRESH
    return CacheMode.LOOKUP


# A read-only dict lookup, not ResponseFormat(value): an Enum call by value costs every request
# that sends the header 0.3 us, the lookup 0.03 us.
_FORMATS = MappingProxyType({f.value: f for f in ResponseFormat})


def requested_format(headers: Mapping[str, str], default: ResponseFormat) -> ResponseFormat:
    value = headers.get("X-Reflex-Format")
    if value is None:
        return default
    value = value.strip().lower()
    if not value:
        return default
    found = _FORMATS.get(value)
    if found is None:
        raise GatewayError(
            ErrorKind.INVALID_REQUEST, "X-Reflex-Format must be 'auto', 'tauq' or 'raw'", param="X-Reflex-Format"
        )
    return found


def native_credential(provider: UpstreamName) -> str:
    """The credential header a provider's own clients send (it wins when both are sent)."""
    return X_API_KEY if provider is UpstreamName.ANTHROPIC else AUTHORIZATION


@dataclass(frozen=True, slots=True)
class RequestHead:
    """One request as read before the lookup. Shared by every exact repeat: never modified."""

    parsed: ParsedRequest
    question_too_long: bool  # its question was dropped (exact tier only); counted per request
    mode: CacheMode
    format: ResponseFormat
    credential: Credential | None
    keys: RequestKeys


class RequestHeads:
    """``read(protocol, body, headers)``: the request's head, read once per distinct body and
    deciding headers. For the event loop only (the LRUs are not locked)."""

    def __init__(self, *, max_question_chars: int, default_format: ResponseFormat) -> None:
        self._max_question_chars = max_question_chars
        self._default_format = default_format
        # by (protocol, blake3 of the body): the parse, shared by the heads of every tenant
        # and header set that sends the same body ...
        self._bodies: ParseOnce[ParsedRequest] = ParseOnce()
        # ... and by the same and the deciding headers' values: the whole head
        self._heads: ParseOnce[RequestHead] = ParseOnce()
        # each protocol's deciding headers, by protocol name (built on first use)
        self._names: dict[str, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self._heads)

    def read(self, protocol: ProtocolAdapter, body: bytes, headers: Mapping[str, str]) -> RequestHead:
        names = self._names.get(protocol.name)
        if names is None:
            names = self._names[protocol.name] = HEAD_HEADERS + protocol.answer_header_names
        values = tuple(map(headers.get, names))
        digest = blake3(body).digest()
        # Kept within the byte budget of what they were read from, headers included (an API key
        # is held here as the request itself holds it while it is forwarded; nothing writes it out).
        size = len(body) + sum(map(len, filter(None, values)))
        return self._heads.get((protocol.name, digest, values), size,
                               lambda: self._read(protocol, body, digest, names, values))

    def _read(self, protocol: ProtocolAdapter, body: bytes, digest: bytes, names: tuple[str, ...],
              values: tuple[str | None, ...]) -> RequestHead:
        # the deciding headers only (headers.get above took each one's first value, as every
        # reader below would)
        headers = CIMultiDict((name, value) for name, value in zip(names, values, strict=True) if value is not None)
        parsed = self._bodies.get((protocol.name, digest), len(body), lambda: protocol.parse(body))
        parsed = protocol.with_headers(parsed, headers)
        too_long = parsed.question is not None and len(parsed.question) > self._max_question_chars
        if too_long:
            parsed = dataclasses.replace(parsed, question=None, context_source=None)
        mode = cache_mode(headers)
        fmt = requested_format(headers, self._default_format)
        credential = credential_from_headers(headers, native=native_credential(protocol.upstream))
        tenant = tenant_id(credential.secret if credential is not None else None)
        return RequestHead(parsed, too_long, mode, fmt, credential, RequestKeys.of(tenant, parsed))
