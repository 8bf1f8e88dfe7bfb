"""The upstream providers (an OpenAI-compatible base URL and an Anthropic one), or a
deterministic local mock.

Requests are forwarded untouched (the body bytes the caller sent), with the one credential the
caller's tenant was derived from, unless a central key is configured for that provider
(``REFLEX_UPSTREAM_API_KEY``, ``REFLEX_ANTHROPIC_UPSTREAM_API_KEY``). Failures to reach the provider
become 502 and timeouts 504 in OpenAI's envelope; the provider's own errors pass through
with their status and body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson
from blake3 import blake3
from multidict import CIMultiDict

from reflex.settings import AnthropicUpstreamSettings, UpstreamSettings
from services.gateway.errors import ErrorKind, GatewayError, envelope
from services.gateway.keys import AUTHORIZATION, X_API_KEY, Credential
from services.gateway.protocols.base import ParsedRequest, ProtocolAdapter, UpstreamName

# Caller headers worth forwarding besides the credential, per provider: OpenAI's org/project
# scoping and tracing; Anthropic's API version and beta features (they change the answer).
_FORWARDED_REQUEST_HEADERS = {
    UpstreamName.OPENAI: ("OpenAI-Organization", "OpenAI-Project", "OpenAI-Beta", "X-Request-Id"),
    UpstreamName.ANTHROPIC: ("anthropic-version", "anthropic-beta", "X-Request-Id"),
}
# Provider headers passed back on a miss: request ids and rate-limit state the caller's SDK
# reads. Hop-by-hop and encoding headers are not ours to forward.
_PASSED_BACK_PREFIXES = ("x-ratelimit-", "openai-", "x-request-id", "anthropic-", "request-id", "retry-after")


def passed_back_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower().startswith(_PASSED_BACK_PREFIXES)}


class UpstreamReply(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...

    def iter_chunks(self) -> AsyncIterator[bytes]: ...


@dataclass
class _HttpReply:
    response: aiohttp.ClientResponse
    idle_timeout: float | None = None  # longest wait for the next chunk of a stream

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self.response.headers

    async def read(self) -> bytes:
        try:
            return await self.response.read()
        except (asyncio.TimeoutError, TimeoutError):
            raise GatewayError(ErrorKind.UPSTREAM_TIMEOUT, "the upstream provider timed out") from None
        except aiohttp.ClientError as exc:
            raise GatewayError(
                ErrorKind.UPSTREAM_UNREACHABLE, f"the upstream connection failed: {type(exc).__name__}"
            ) from None

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        # readany: forward whatever arrived, without waiting for line or size boundaries; a
        # silence longer than the idle timeout raises TimeoutError (the relay ends the stream)
        while True:
            data = await asyncio.wait_for(self.response.content.readany(), self.idle_timeout)
            if not data:
                return
            yield data


class Upstream(Protocol):
    def open(
        self,
        provider: UpstreamName,
        method: str,
        path: str,
        *,
        body: bytes | None,
        headers: Mapping[str, str],
        credential: Credential | None,
        query: str = "",
        stream: bool = False,
    ) -> contextlib.AbstractAsyncContextManager[UpstreamReply]:
        """Send one request to ``provider``'s base URL + ``path``: the body as it is, the
        caller's ``credential`` (the only one forwarded) unless a central key is configured.
        ``stream``: the answer is a stream, so the first-byte and idle timeouts apply."""

    async def close(self) -> None: ...


class HttpUpstream:
    """One pooled ClientSession to the providers, bounded by ``upstream_max_connections``."""

    def __init__(self, settings: UpstreamSettings, anthropic: AnthropicUpstreamSettings) -> None:
        self._bases = {UpstreamName.OPENAI: settings.url, UpstreamName.ANTHROPIC: anthropic.url}
        self._central = {
            UpstreamName.OPENAI: (AUTHORIZATION, f"Bearer {settings.api_key.get_secret_value()}")
            if settings.api_key is not None else None,
            UpstreamName.ANTHROPIC: (X_API_KEY, anthropic.api_key.get_secret_value())
            if anthropic.api_key is not None else None,
        }
        self._first_byte_timeout = settings.first_byte_timeout_secs
        self._idle_timeout = settings.idle_timeout_secs
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.max_connections),
            timeout=aiohttp.ClientTimeout(
                total=settings.timeout_secs, sock_connect=settings.connect_timeout_secs
            ),
            # the provider's compressed bodies are decompressed here and re-sent plain, so a
            # cached entry never depends on the encoding one caller happened to accept
            auto_decompress=True,
        )

    def _headers(
        self, provider: UpstreamName, caller: Mapping[str, str], credential: Credential | None, has_body: bool
    ) -> dict[str, str]:
        out: dict[str, str] = {"Accept": caller.get("Accept", "application/json")}
        if has_body:
            out["Content-Type"] = caller.get("Content-Type", "application/json")
        central = self._central[provider]
        if central is not None:
            out[central[0]] = central[1]
        elif credential is not None:
            out[credential.header] = credential.value
        for name in _FORWARDED_REQUEST_HEADERS[provider]:
            if caller.get(name):
                out[name] = caller[name]
        return out

    @contextlib.asynccontextmanager
    async def open(
        self,
        provider: UpstreamName,
        method: str,
        path: str,
        *,
        body: bytes | None,
        headers: Mapping[str, str],
        credential: Credential | None,
        query: str = "",
        stream: bool = False,
    ) -> AsyncIterator[UpstreamReply]:
        url = self._bases[provider] + path + (f"?{query}" if query else "")
        try:
            response = await asyncio.wait_for(
                self._session.request(
                    method, url, data=body, headers=self._headers(provider, headers, credential, body is not None)
                ),
                self._first_byte_timeout if stream else None,
            )
        except (asyncio.TimeoutError, TimeoutError):
            raise GatewayError(ErrorKind.UPSTREAM_TIMEOUT, "the upstream provider timed out") from None
        except aiohttp.ClientError as exc:
            raise GatewayError(
                ErrorKind.UPSTREAM_UNREACHABLE, f"cannot reach the upstream provider: {type(exc).__name__}"
            ) from None
        try:
            yield _HttpReply(response, self._idle_timeout if stream else None)
        finally:
            response.release()

    async def close(self) -> None:
        await self._session.close()


# ------------------------------------------------------------------------------ mock provider


@dataclass
class _MockReply:
    status: int
    headers: Mapping[str, str]
    body: bytes
    events: list[bytes]

    async def read(self) -> bytes:
        return self.body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for event in self.events:
            yield event


class MockUpstream:
    """Deterministic local answers (REFLEX_MOCK_PROVIDER=1) for demos and CI: no network.

    It answers every protocol the gateway serves, streaming too, in that protocol's own wire
    format (each adapter builds its answer and replays it). The answer depends only on the
    request's content, so repeated requests get the same text whether or not they were cached.
    """

    MODELS = ("reflex-mock",)

    def __init__(self, protocols: tuple[ProtocolAdapter, ...]) -> None:
        self._by_path = {(p.upstream, p.upstream_path): p for p in protocols}

    @staticmethod
    def answer_text(request: ParsedRequest) -> str:
        digest = blake3(request.canonical).hexdigest()[:8]
        asked = (request.question or "").strip()[:200]
        return f"[mock {digest}] You asked: {asked}"

    @contextlib.asynccontextmanager
    async def open(
        self,
        provider: UpstreamName,
        method: str,
        path: str,
        *,
        body: bytes | None,
        headers: Mapping[str, str],
        credential: Credential | None,
        query: str = "",
        stream: bool = False,
    ) -> AsyncIterator[UpstreamReply]:
        json_type = CIMultiDict({"Content-Type": "application/json"})
        if method == "GET" and path.rstrip("/").endswith("/models"):
            data = {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "reflex"}
                                               for m in self.MODELS]}
            yield _MockReply(200, json_type, orjson.dumps(data), [])
            return
        protocol = self._by_path.get((provider, path))
        if method != "POST" or protocol is None or body is None:
            raise GatewayError(ErrorKind.NOT_FOUND, f"the mock provider has no {method} {path}")
        try:
            request = protocol.parse(body)
        except GatewayError as exc:
            # like a provider: the client's mistake is a 400 in its own envelope, never a 500
            yield _MockReply(exc.kind.status, json_type, envelope(exc.kind, exc.message, exc.param, protocol.dialect), [])
            return
        answer = protocol.mock_answer(request, self.answer_text(request), blake3(body).hexdigest()[:24])
        if request.stream:
            events = list(protocol.replay(answer, request))
            yield _MockReply(200, CIMultiDict({"Content-Type": "text/event-stream"}), b"", events)
        else:
            yield _MockReply(200, json_type, orjson.dumps(answer), [])

    async def close(self) -> None:
        return None


def open_upstream(
    settings: UpstreamSettings, anthropic: AnthropicUpstreamSettings, protocols: tuple[ProtocolAdapter, ...]
) -> Upstream:
    return MockUpstream(protocols) if settings.mock_provider else HttpUpstream(settings, anthropic)
