"""Defects an adversarial probe found at the HTTP layer, each kept closed (issue "Reliability
and security"): a real gateway on a TCP port, raw sockets where an HTTP client would refuse to
misbehave, and the fake upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from services.gateway.main import GatewayServer
from tests.gateway.conftest import gateway_settings
from tests.support.fake_upstream import FakeUpstream

CHAT = "/v1/chat/completions"
GOOD = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
async def gateway(fake_upstream: FakeUpstream) -> AsyncIterator[GatewayServer]:
    server = GatewayServer(gateway_settings(fake_upstream, max_inflight=4, body_read_timeout_secs=1.0,
                                            header_read_timeout_secs=1.0))
    await server.start()
    yield server
    await server.stop()


async def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), timeout)
    finally:
        writer.close()


def status_and_json(reply: bytes) -> tuple[int, Any]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, orjson.loads(body)


async def test_slow_bodies_never_lock_other_callers_out(gateway: GatewayServer) -> None:
    # Twice as many stalled uploads as there are slots: each sends its headers and one byte.
    stalled = []
    for _ in range(8):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")
        await writer.drain()
        stalled.append((reader, writer))
    await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as session:
        for _ in range(3):  # a normal caller still gets answers, not 429
            async with session.post(gateway.url + CHAT, json=GOOD) as response:
                assert response.status == 200, await response.text()
    for reader, writer in stalled:  # and each stalled upload ends with 408 in the envelope
        status, body = status_and_json(await asyncio.wait_for(reader.read(65536), 5))
        assert status == 408 and body["error"]["code"] == "request_timeout"
        writer.close()


async def test_header_trickling_is_cut_off(gateway: GatewayServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        await writer.drain()
        # the gateway closes the connection after its header deadline (1 s here)
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("name", "request_bytes"),
    [
        ("gzip on plain text", b"Content-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello"),
        ("an encoding we cannot decode", b"Content-Encoding: br\r\nContent-Length: 5\r\n\r\nhello"),
        ("a Content-Length that is not a number", b"Content-Length: abc\r\n\r\nhello"),
        ("Content-Length and Transfer-Encoding", b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ],
)
async def test_malformed_requests_get_the_envelope(gateway: GatewayServer, name: str, request_bytes: bytes) -> None:
    reply = await raw_exchange(gateway.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                             b"Content-Type: application/json\r\n" + request_bytes)
    status, body = status_and_json(reply)
    assert status == 400, name
    # OpenAI's envelope (what the SDKs read), whatever else the body holds
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert "Traceback" not in body["error"]["message"]


async def test_malformed_anthropic_requests_get_anthropics_envelope(gateway: GatewayServer) -> None:
    # aiohttp keeps no path for a request it could not parse: the body reads as both envelopes
    reply = await raw_exchange(gateway.port, b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n"
                                             b"Content-Length: abc\r\n\r\n")
    status, body = status_and_json(reply)
    assert status == 400 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("malformed HTTP request")


async def test_json_nested_too_deep_to_key_is_a_400(gateway: GatewayServer) -> None:
    # valid JSON (the parser reads 1,023 levels), too deep to re-serialise for the key (254)
    deep = b"[" * 400 + b'"x"' + b"]" * 400
    body = orjson.dumps(GOOD)[:-1] + b', "extra": ' + deep + b"}"
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.url + CHAT, data=body,
                                headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("text", [5, None, ["a"]])
async def test_the_mock_provider_never_answers_500(fake_upstream: FakeUpstream, text: Any) -> None:
    server = GatewayServer(gateway_settings(fake_upstream, mock_provider=True))
    await server.start()
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url + CHAT, json=body) as response:
                assert response.status in (200, 400), await response.text()
    finally:
        await server.stop()


@pytest.mark.parametrize("scheme", ["Token sk-victim", "Basic c2stdmljdGlt", "Bearer\tsk-victim", "sk-victim"])
async def test_any_credential_names_a_tenant_never_the_anonymous_one(
    gateway: GatewayServer, fake_upstream: FakeUpstream, scheme: str
) -> None:
    body = {**GOOD, "messages": [{"role": "user", "content": f"secret for {scheme}"}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.url + CHAT, json=body, headers={"Authorization": scheme}) as response:
            assert response.status == 200
            assert response.headers["X-Reflex-Tenant"] != "anonymous"
        await gateway.flush()
        # a caller without any key must not be served the victim's answer
        async with session.post(gateway.url + CHAT, json=body) as response:
            assert response.headers["X-Reflex-Status"] == "miss"
            assert response.headers["X-Reflex-Tenant"] == "anonymous"


async def test_only_the_credential_the_tenant_came_from_is_forwarded(
    gateway: GatewayServer, fake_upstream: FakeUpstream
) -> None:
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": "Bearer sk-chat", "x-api-key": "sk-other"}
        async with session.post(gateway.url + CHAT, json=GOOD, headers=headers) as response:
            assert response.status == 200
    (call,) = fake_upstream.chat_calls
    assert call.headers.get("Authorization") == "Bearer sk-chat"
    assert "x-api-key" not in {k.lower() for k in call.headers}


@pytest.mark.parametrize(
    "odd",
    [
        {"id": "x", "choices": [{"index": "zero", "delta": {"content": "?"}}]},
        {"id": "x", "choices": {"index": 0}},
        {"id": "x", "choices": [{"index": 0, "delta": {"content": ["an", "array"]}}]},
        {"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": "not a list"}}]},
    ],
)
async def test_an_unexpected_stream_chunk_is_relayed_untouched_and_not_cached(
    gateway: GatewayServer, fake_upstream: FakeUpstream, odd: dict[str, Any]
) -> None:
    from tests.support import fake_upstream as fu

    body = {**GOOD, "stream": True, "messages": [{"role": "user", "content": f"odd {orjson.dumps(odd)!r}"}]}
    fake_upstream.fail_next(fu.odd_chunk(odd))
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.url + CHAT, json=body) as response:
            assert response.status == 200
            relayed = await response.read()
        # byte for byte what the provider sent: no second response inside the first, no cut
        assert relayed == fake_upstream.last_stream
        assert b"HTTP/1.1" not in relayed and relayed.endswith(b"data: [DONE]\n\n")
        await gateway.flush()
        async with session.post(gateway.url + CHAT, json=body) as response:
            await response.read()
            assert response.headers["X-Reflex-Status"] == "miss"  # what it could not follow, it did not store


async def test_per_tenant_series_are_capped(fake_upstream: FakeUpstream) -> None:
    server = GatewayServer(gateway_settings(fake_upstream, metrics_max_tenants=3))
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(12):  # twelve tenants, each with an exact hit (tokens saved per tenant)
                headers = {"Authorization": f"Bearer sk-tenant-{i}"}
                for _ in range(2):
                    async with session.post(server.url + CHAT, json=GOOD, headers=headers) as response:
                        await response.read()
                    await server.flush()
            async with session.get(server.url + "/metrics") as response:
                page = await response.text()
        tenants = {line.split('tenant="')[1].split('"')[0] for line in page.splitlines()
                   if line.startswith("reflex_gateway_tokens_saved_total{")}
        assert len(tenants) == 4 and "other" in tenants  # three of their own, the rest together
    finally:
        await server.stop()


async def test_metrics_can_require_a_token(fake_upstream: FakeUpstream) -> None:
    server = GatewayServer(gateway_settings(fake_upstream, metrics_token="scrape-secret"))
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/metrics") as response:
                assert response.status == 401
            async with session.get(server.url + "/metrics", headers={"Authorization": "Bearer wrong"}) as response:
                assert response.status == 401
            async with session.get(server.url + "/metrics",
                                   headers={"Authorization": "Bearer scrape-secret"}) as response:
                assert response.status == 200 and "reflex_gateway_requests_total" in await response.text()
    finally:
        await server.stop()


async def test_the_in_process_l1_is_bounded_in_bytes() -> None:
    from services.gateway.l1 import MemoryL1

    cache = MemoryL1(capacity=1000, ttl_secs=60, max_bytes=10 * 1024)
    for i in range(5):
        await cache.set(f"k{i}", bytes(4 * 1024))
    assert cache.size_bytes <= 10 * 1024
    assert await cache.get("k0") is None and await cache.get("k4") is not None  # least recent went first
    await cache.set("huge", bytes(20 * 1024))  # larger than the whole budget: not kept at all
    assert await cache.get("huge") is None and await cache.get("k4") is not None


@pytest.mark.parametrize("stream", [False, True])
async def test_answers_over_the_cacheable_size_are_relayed_not_stored(
    fake_upstream: FakeUpstream, stream: bool
) -> None:
    server = GatewayServer(gateway_settings(fake_upstream, max_cacheable_bytes=2048))
    await server.start()
    try:
        body = {**GOOD, "stream": stream, "messages": [{"role": "user", "content": "long " * 1000}]}
        async with aiohttp.ClientSession() as session:
            for expected in ("miss", "miss"):
                async with session.post(server.url + CHAT, json=body) as response:
                    data = await response.read()
                    assert response.status == 200 and len(data) > 2048
                    assert response.headers["X-Reflex-Status"] == expected
                await server.flush()
    finally:
        await server.stop()


@pytest.mark.parametrize("name", ["../x", "a/b", "/abs", ".hidden", "x" * 65, "white space"])
def test_a_collection_name_can_never_leave_the_storage_path(name: str) -> None:
    from reflex.settings import GatewaySettings, SettingsError

    with pytest.raises(SettingsError, match="REFLEX_QDRANT_COLLECTION"):
        GatewaySettings.build(qdrant_collection=name)
    assert GatewaySettings.build(qdrant_collection="reflex-prod_2").l2.collection == "reflex-prod_2"
