"""The upstream provider: any OpenAI-compatible endpoint, or a deterministic local mock.

Requests are forwarded untouched (the body bytes the caller sent), with the caller's key
unless ``REFLEX_UPSTREAM_API_KEY`` holds a central one. Failures to reach the provider
become 502 and timeouts 504 in OpenAI's envelope; the provider's own errors pass through
with their status and body.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson
from blake3 import blake3
from multidict import CIMultiDict

from reflex.settings import UpstreamSettings
from services.gateway.errors import ErrorKind, GatewayError
from services.gateway.streaming import replay_events

# Caller headers worth forwarding besides the key: OpenAI's org/project scoping and tracing.
_FORWARDED_REQUEST_HEADERS = ("OpenAI-Organization", "OpenAI-Project", "OpenAI-Beta", "X-Request-Id")
# Provider headers passed back on a miss: content type, request ids and rate-limit state the
# caller's SDK reads. Hop-by-hop and encoding headers are not ours to forward.
_PASSED_BACK_PREFIXES = ("x-ratelimit-", "openai-", "x-request-id")


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
        # iter_any: forward whatever arrived, without waiting for line or size boundaries
        async for data in self.response.content.iter_any():
            yield data


class Upstream(Protocol):
    def open(
        self, method: str, path: str, *, body: bytes | None, headers: Mapping[str, str]
    ) -> contextlib.AbstractAsyncContextManager[UpstreamReply]: ...

    async def close(self) -> None: ...


class HttpUpstream:
    """One pooled ClientSession to the provider, bounded by ``upstream_max_connections``."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self._base = settings.url
        self._api_key = settings.api_key
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.max_connections),
            timeout=aiohttp.ClientTimeout(
                total=settings.timeout_secs, sock_connect=settings.connect_timeout_secs
            ),
            # the provider's compressed bodies are decompressed here and re-sent plain, so a
            # cached entry never depends on the encoding one caller happened to accept
            auto_decompress=True,
        )

    def _headers(self, caller: Mapping[str, str], has_body: bool) -> dict[str, str]:
        out: dict[str, str] = {"Accept": caller.get("Accept", "application/json")}
        if has_body:
            out["Content-Type"] = "application/json"
        if self._api_key is not None:
            out["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        else:
            if caller.get("Authorization"):
                out["Authorization"] = caller["Authorization"]
            if caller.get("x-api-key"):
                out["x-api-key"] = caller["x-api-key"]
        for name in _FORWARDED_REQUEST_HEADERS:
            if caller.get(name):
                out[name] = caller[name]
        return out

    @contextlib.asynccontextmanager
    async def open(
        self, method: str, path: str, *, body: bytes | None, headers: Mapping[str, str]
    ) -> AsyncIterator[UpstreamReply]:
        try:
            response = await self._session.request(
                method, self._base + path, data=body, headers=self._headers(headers, body is not None)
            )
        except (asyncio.TimeoutError, TimeoutError):
            raise GatewayError(ErrorKind.UPSTREAM_TIMEOUT, "the upstream provider timed out") from None
        except aiohttp.ClientError as exc:
            raise GatewayError(
                ErrorKind.UPSTREAM_UNREACHABLE, f"cannot reach the upstream provider: {type(exc).__name__}"
            ) from None
        try:
            yield _HttpReply(response)
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

    The answer depends only on the request's content, so repeated requests get the same text
    whether or not they were cached.
    """

    MODELS = ("reflex-mock",)

    @staticmethod
    def answer_text(request: Mapping[str, Any]) -> str:
        last = (request.get("messages") or [{}])[-1]
        content = last.get("content") if isinstance(last, dict) else None
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        digest = blake3(orjson.dumps(request.get("messages"), option=orjson.OPT_SORT_KEYS)).hexdigest()[:8]
        return f"[mock {digest}] You asked: {str(content or '').strip()[:200]}"

    @contextlib.asynccontextmanager
    async def open(
        self, method: str, path: str, *, body: bytes | None, headers: Mapping[str, str]
    ) -> AsyncIterator[UpstreamReply]:
        if method == "GET" and path == "/models":
            data = {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "reflex"} for m in self.MODELS]}
            yield _MockReply(200, CIMultiDict({"Content-Type": "application/json"}), orjson.dumps(data), [])
            return
        if method != "POST" or path != "/chat/completions" or body is None:
            raise GatewayError(ErrorKind.NOT_FOUND, f"the mock provider has no {method} {path}")
        request = orjson.loads(body)
        text = self.answer_text(request)
        n = int(request.get("n") or 1)
        completion_id = "chatcmpl-mock-" + blake3(body).hexdigest()[:24]
        created = int(time.time())
        prompt_tokens = len(orjson.dumps(request.get("messages"))) // 4
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n * len(text.split()),
            "total_tokens": prompt_tokens + n * len(text.split()),
        }
        completion = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": request.get("model", "reflex-mock"),
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
                for i in range(n)
            ],
            "usage": usage,
        }
        if request.get("stream") is True:
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            events = list(replay_events(completion, include_usage=include_usage))
            yield _MockReply(200, CIMultiDict({"Content-Type": "text/event-stream"}), b"", events)
        else:
            yield _MockReply(200, CIMultiDict({"Content-Type": "application/json"}), orjson.dumps(completion), [])

    async def close(self) -> None:
        return None


def open_upstream(settings: UpstreamSettings) -> Upstream:
    return MockUpstream() if settings.mock_provider else HttpUpstream(settings)
