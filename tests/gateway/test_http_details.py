"""Fine details through ``aiohttp_client`` (the app in the test's own loop): every bad-input
case, the concurrency bound, upstream failures, headers, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from reflex.settings import GatewaySettings
from services.gateway.app import create_app
from services.gateway.main import GatewayServer
from services.gateway.state import STATE
from tests.gateway.conftest import RAW, gateway_settings
from tests.support import fake_upstream as fu
from tests.support.fake_upstream import FakeUpstream
from tests.support.redis_server import free_port

CHAT = "/v1/chat/completions"
GOOD = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}
KEY = "sk-secret-key-never-logged"
AUTH = {"Authorization": f"Bearer {KEY}", **RAW}


@pytest.fixture
async def client(aiohttp_client: Any, fake_upstream: FakeUpstream) -> TestClient:
    return await aiohttp_client(create_app(gateway_settings(fake_upstream, max_body_bytes=4096)))


async def make_client(aiohttp_client: Any, settings: GatewaySettings) -> TestClient:
    return await aiohttp_client(create_app(settings))


def assert_envelope(body: dict[str, Any], code: str, param: str | None = None) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["param"] == param
    assert "Traceback" not in body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"", "invalid_json", None),
        (b"{not json", "invalid_json", None),
        (b"[1, 2]", "invalid_json", None),
        (b"\xff\xfe{}", "invalid_encoding", None),
        (b'{"model": "m", "messages": [{"role": "user", "content": "caf\xe9"}]}', "invalid_encoding", None),
        (orjson.dumps({"messages": GOOD["messages"]}), "missing_required_parameter", "model"),
        (orjson.dumps({"model": "m"}), "missing_required_parameter", "messages"),
        (orjson.dumps({"model": 3, "messages": GOOD["messages"]}), "invalid_type", "model"),
        (orjson.dumps({"model": "m", "messages": "hello"}), "invalid_type", "messages"),
        (orjson.dumps({"model": "m", "messages": []}), "invalid_type", "messages"),
        (orjson.dumps({"model": "m", "messages": ["hello"]}), "invalid_type", "messages[0]"),
        (orjson.dumps({"model": "m", "messages": [{"content": "x"}]}), "missing_required_parameter", "messages[0].role"),
        (orjson.dumps({"model": "m", "messages": [{"role": "user", "content": 5}]}), "invalid_type", "messages[0].content"),
        (orjson.dumps({**GOOD, "stream": "yes"}), "invalid_type", "stream"),
        (orjson.dumps({**GOOD, "n": 0}), "invalid_type", "n"),
        (orjson.dumps({**GOOD, "n": True}), "invalid_type", "n"),
        (orjson.dumps({**GOOD, "stream_options": "usage"}), "invalid_type", "stream_options"),
        (orjson.dumps({**GOOD, "functions": [{"name": "f"}]}), "unsupported_parameter", "functions"),
        (orjson.dumps({**GOOD, "function_call": "auto"}), "unsupported_parameter", "function_call"),
    ],
    ids=[
        "empty", "malformed", "not-object", "bad-utf8", "latin1-inside-json", "no-model", "no-messages",
        "model-int", "messages-str", "messages-empty", "message-str", "no-role", "content-int",
        "stream-str", "n-zero", "n-bool", "stream-options-str", "functions", "function_call",
    ],
)
async def test_bad_input_gets_a_400_envelope(
    client: TestClient, fake_upstream: FakeUpstream, body: bytes, code: str, param: str | None
) -> None:
    response = await client.post(CHAT, data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert_envelope(await response.json(), code, param)
    assert fake_upstream.chat_count == 0


async def test_body_over_the_limit_is_413(client: TestClient, fake_upstream: FakeUpstream) -> None:
    big = {**GOOD, "messages": [{"role": "user", "content": "x" * 5000}]}
    response = await client.post(CHAT, data=orjson.dumps(big), headers={"Content-Type": "application/json"})
    assert response.status == 413
    assert_envelope(await response.json(), "request_too_large")
    assert fake_upstream.chat_count == 0


async def test_unknown_route_and_method_get_the_envelope(client: TestClient) -> None:
    response = await client.post("/v1/completions-typo", json=GOOD)
    assert response.status == 404
    assert_envelope(await response.json(), "not_found")
    response = await client.get(CHAT)
    assert response.status == 405
    assert_envelope(await response.json(), "method_not_allowed")


async def test_bad_reflex_headers_are_400(client: TestClient) -> None:
    for headers in ({"X-Reflex-Cache": "sometimes"}, {"X-Reflex-Format": "xml"}):
        response = await client.post(CHAT, json=GOOD, headers=headers)
        assert response.status == 400
        body = await response.json()
        assert body["error"]["param"] == next(iter(headers))


async def test_past_max_inflight_is_429_and_recovers(aiohttp_client: Any, fake_upstream: FakeUpstream) -> None:
    client = await make_client(aiohttp_client, gateway_settings(fake_upstream, max_inflight=1))
    fake_upstream.fail_next(fu.GATED)
    first = await client.post(CHAT, json={**GOOD, "stream": True}, headers=AUTH)
    assert first.status == 200
    await first.content.readline()  # the first chunk arrived: the request is in flight
    second = await client.post(CHAT, json=GOOD, headers=AUTH)
    assert second.status == 429
    assert second.headers["Retry-After"] == "1"
    assert_envelope(await second.json(), "gateway_overloaded")
    fake_upstream.gate.set()
    await first.read()
    third = await client.post(CHAT, json=GOOD, headers=AUTH)
    assert third.status == 200


async def test_stream_chunks_are_relayed_as_they_arrive(client: TestClient, fake_upstream: FakeUpstream) -> None:
    """The first chunk reaches the client while the upstream is still holding the rest
    back (gated): the gateway relays, it does not buffer the whole answer."""
    fake_upstream.fail_next(fu.GATED)
    response = await client.post(CHAT, json={**GOOD, "stream": True}, headers=AUTH)
    first = await response.content.readline()
    assert first.startswith(b"data: ") and b'"role":"assistant"' in first
    assert not fake_upstream.gate.is_set()
    fake_upstream.gate.set()
    rest = await response.read()
    assert rest.rstrip().endswith(b"data: [DONE]")


async def test_upstream_unreachable_is_502(aiohttp_client: Any, fake_upstream: FakeUpstream) -> None:
    settings = gateway_settings(fake_upstream, upstream_url=f"http://127.0.0.1:{free_port()}/v1")
    client = await make_client(aiohttp_client, settings)
    for stream in (False, True):
        response = await client.post(CHAT, json={**GOOD, "stream": stream}, headers=AUTH)
        assert response.status == 502
        assert_envelope(await response.json(), "upstream_unreachable")
        assert response.headers["X-Reflex-Status"] == "miss"


async def test_upstream_dropping_the_connection_is_502(client: TestClient, fake_upstream: FakeUpstream) -> None:
    fake_upstream.fail_next(fu.DISCONNECT)
    response = await client.post(CHAT, json=GOOD, headers=AUTH)
    assert response.status == 502
    assert_envelope(await response.json(), "upstream_unreachable")


async def test_upstream_timeout_is_504(aiohttp_client: Any, fake_upstream: FakeUpstream) -> None:
    client = await make_client(aiohttp_client, gateway_settings(fake_upstream, upstream_timeout_secs=0.2))
    fake_upstream.fail_next(fu.slow(2.0))
    response = await client.post(CHAT, json=GOOD, headers=AUTH)
    assert response.status == 504
    assert_envelope(await response.json(), "upstream_timeout")


async def test_a_stream_that_does_not_start_is_504_after_the_first_byte_timeout(
    aiohttp_client: Any, fake_upstream: FakeUpstream
) -> None:
    # Without a first-byte timeout a stalled provider holds the slot for the 600 s total.
    client = await make_client(aiohttp_client, gateway_settings(fake_upstream, upstream_first_byte_timeout_secs=0.3))
    fake_upstream.fail_next(fu.slow(5.0))
    started = asyncio.get_running_loop().time()
    response = await client.post(CHAT, json={**GOOD, "stream": True}, headers=AUTH)
    assert response.status == 504
    assert_envelope(await response.json(), "upstream_timeout")
    assert asyncio.get_running_loop().time() - started < 3.0


async def test_a_stream_that_goes_silent_ends_in_band_and_is_not_cached(
    aiohttp_client: Any, fake_upstream: FakeUpstream
) -> None:
    client = await make_client(aiohttp_client, gateway_settings(fake_upstream, upstream_idle_timeout_secs=0.3))
    fake_upstream.fail_next(fu.GATED)  # one chunk, then silence until the gate opens
    response = await client.post(CHAT, json={**GOOD, "stream": True}, headers=AUTH)
    assert response.status == 200
    text = (await response.read()).decode()
    assert '"upstream_timeout"' in text and "[DONE]" not in text
    fake_upstream.gate.set()
    await client.app[STATE].settle()
    again = await client.post(CHAT, json={**GOOD, "stream": True}, headers=AUTH)
    await again.read()
    assert again.headers["X-Reflex-Status"] == "miss"  # the cut answer was never stored
    assert fake_upstream.chat_count == 2


async def test_central_upstream_key_replaces_the_callers(aiohttp_client: Any, fake_upstream: FakeUpstream) -> None:
    client = await make_client(aiohttp_client, gateway_settings(fake_upstream, upstream_api_key="sk-central"))
    response = await client.post(CHAT, json=GOOD, headers=AUTH)
    assert response.status == 200
    (call,) = fake_upstream.chat_calls
    assert call.headers["Authorization"] == "Bearer sk-central"


async def test_mock_provider_is_deterministic_and_streams(aiohttp_client: Any, fake_upstream: FakeUpstream) -> None:
    settings = gateway_settings(fake_upstream, mock_provider=True, upstream_url="http://127.0.0.1:9/v1")
    first = await make_client(aiohttp_client, settings)
    second = await make_client(aiohttp_client, settings)  # another app: no shared cache
    plain = [await (await c.post(CHAT, json=GOOD, headers=AUTH)).json() for c in (first, second)]
    assert plain[0]["choices"] == plain[1]["choices"]
    assert "hello" in plain[0]["choices"][0]["message"]["content"]
    response = await second.post(CHAT, json={**GOOD, "messages": [{"role": "user", "content": "stream me"}], "stream": True})
    text = await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert text.rstrip().endswith("data: [DONE]")
    models = await (await first.get("/v1/models")).json()
    assert models["data"][0]["id"] == "reflex-mock"
    assert fake_upstream.chat_count == 0


async def test_health_ready_and_metrics(client: TestClient) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/ready")
    assert ready.status == 200
    assert (await ready.json())["components"] == {"memory": "ok"}
    await client.post(CHAT, json=GOOD, headers=AUTH)
    await client.app[STATE].settle()
    hit = await client.post(CHAT, json=GOOD, headers=AUTH)
    assert hit.headers["X-Reflex-Status"] == "hit-l1-exact"
    text = await (await client.get("/metrics")).text()
    assert 'reflex_gateway_requests_total{code="200",status="miss"} 1.0' in text
    assert 'reflex_gateway_requests_total{code="200",status="hit-l1-exact"} 1.0' in text
    tenant = hit.headers["X-Reflex-Tenant"]
    assert f'reflex_gateway_tokens_saved_total{{tenant="{tenant}"}}' in text
    assert 'reflex_gateway_lookup_seconds_count{stage="l1"} 2.0' in text


async def test_tenant_header_and_logs_never_show_the_key(
    client: TestClient, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_upstream.fail_next(fu.DISCONNECT)  # exercise the failure logging too
    for body in (GOOD, {**GOOD, "stream": True}, GOOD):
        response = await client.post(CHAT, json=body, headers=AUTH)
        await response.read()
        assert KEY not in response.headers.get("X-Reflex-Tenant", "")
        assert response.headers["X-Reflex-Tenant"] != "anonymous"
    assert caplog.records  # something was logged, and none of it is the key
    assert all(KEY not in record.getMessage() for record in caplog.records)
    assert KEY not in caplog.text


async def test_keyless_callers_share_the_anonymous_tenant(client: TestClient) -> None:
    response = await client.post(CHAT, json=GOOD, headers=RAW)
    assert response.headers["X-Reflex-Tenant"] == "anonymous"


async def test_graceful_stop_lets_an_inflight_stream_finish(fake_upstream: FakeUpstream) -> None:
    server = GatewayServer(gateway_settings(fake_upstream, shutdown_grace_secs=20))
    await server.start()
    fake_upstream.fail_next(fu.GATED)
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + CHAT, json={**GOOD, "stream": True}, headers=AUTH) as response:
            await response.content.readline()
            stopping = asyncio.create_task(server.stop())
            await asyncio.sleep(0.1)
            assert not stopping.done()  # waiting for our request, not cutting it
            fake_upstream.gate.set()
            body = await response.read()
    await stopping
    assert body.rstrip().endswith(b"data: [DONE]")


async def test_a_bug_becomes_a_500_envelope_without_traceback(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken_lookup(keys: Any) -> Any:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(client.app[STATE].cascade, "lookup", broken_lookup)
    response = await client.post(CHAT, json=GOOD, headers=AUTH)
    assert response.status == 500
    body = await response.json()
    assert_envelope(body, "internal_error")
    assert "simulated bug" not in body["error"]["message"]
    assert "simulated bug" in caplog.text  # the trace is in our log instead
