"""``POST /v1/messages`` end to end through the official ``anthropic`` SDK (sync and async,
streaming and not, tool use, thinking) against a real gateway with the fake provider."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from services.gateway.keys import tenant_id
from tests.anthropic_messages import shapes
from tests.anthropic_messages.conftest import async_client, sync_client
from tests.gateway.conftest import RAW, RunningGateway
from tests.support import fake_anthropic as fa
from tests.support import fake_upstream as fu
from tests.support.fake_upstream import Behaviour, FakeUpstream

MODEL = "claude-fake"
QUESTION = "What is the capital of France?"
MESSAGES = [{"role": "user", "content": QUESTION}]
SYSTEM = "Be brief."
WEATHER_TOOL = {"name": "get_weather", "description": "Weather for a city.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def ask(client: anthropic.Anthropic, *, stream: bool = False, messages: list[dict[str, Any]] = MESSAGES,
        **kwargs: Any) -> tuple[str, anthropic.types.Message, dict[str, str]]:
    """One request; (X-Reflex-Status, the message as the SDK built it, the response headers)."""
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 256, "system": SYSTEM, "messages": messages, **kwargs}
    if stream:
        with client.messages.stream(**params) as events:
            message = events.get_final_message()
            headers = dict(events.response.headers)
    else:
        raw = client.messages.with_raw_response.create(**params)
        message, headers = raw.parse(), dict(raw.headers)
    return headers["x-reflex-status"], message, headers


async def ask_async(client: anthropic.AsyncAnthropic, *, stream: bool, **kwargs: Any
                    ) -> tuple[str, anthropic.types.Message, dict[str, str]]:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 256, "messages": MESSAGES, **kwargs}
    if stream:
        async with client.messages.stream(**params) as events:
            message = await events.get_final_message()
            headers = dict(events.response.headers)
    else:
        raw = await client.messages.with_raw_response.create(**params)
        message, headers = await raw.parse(), dict(raw.headers)
    return headers["x-reflex-status"], message, headers


def upstream_calls(fake: FakeUpstream) -> int:
    return len(fake.calls_to(fa.MESSAGES_PATH))


def text_of(message: anthropic.types.Message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


# ------------------------------------------------------------------------------ miss, then hit


def test_miss_then_exact_hit_with_the_usage_it_first_had(
    start_messages_gateway: Callable[..., RunningGateway], fake_upstream: FakeUpstream, l1_backend: str
) -> None:
    gateway = start_messages_gateway(l1_backend)
    client = sync_client(gateway)
    status, first, headers = ask(client)
    assert status == "miss" and text_of(first) == f"Answer #1 to: {QUESTION}"
    gateway.flush()
    status, again, headers = ask(client)
    assert status == "hit-l1-exact", headers
    assert again.model_dump() == first.model_dump()  # the same message, usage included
    assert again.usage.input_tokens == fa.INPUT_TOKENS and again.usage.cache_read_input_tokens == 5
    assert int(headers["x-reflex-tokens-saved"]) == fa.INPUT_TOKENS + fa.CACHE_READ_INPUT_TOKENS + first.usage.output_tokens
    assert headers["x-reflex-entry-id"] and headers["x-reflex-tenant"] == tenant_id("sk-ant-alice")
    assert upstream_calls(fake_upstream) == 1


def test_a_streamed_miss_serves_a_plain_request_and_the_reverse(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    client = sync_client(gateway)
    status, streamed, _ = ask(client, stream=True)
    assert status == "miss" and text_of(streamed) == f"Answer #1 to: {QUESTION}"
    gateway.flush()
    status, plain, _ = ask(client)
    assert status == "hit-l1-exact"
    assert plain.model_dump() == streamed.model_dump()

    other = [{"role": "user", "content": "And of Spain?"}]
    status, plain, _ = ask(client, messages=other)
    assert status == "miss"
    gateway.flush()
    status, streamed, headers = ask(client, stream=True, messages=other)
    assert status == "hit-l1-exact" and headers["content-type"].startswith("text/event-stream")
    assert streamed.model_dump() == plain.model_dump()  # the SDK rebuilt the same message from the replay
    assert upstream_calls(fake_upstream) == 2


async def test_the_async_client_streaming_and_not(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = async_client(gateway)
    status, first, _ = await ask_async(client, stream=False)
    assert status == "miss"
    await asyncio.to_thread(gateway.flush)
    for stream in (True, False):
        status, again, _ = await ask_async(client, stream=stream)
        assert status == "hit-l1-exact"
        assert again.model_dump() == first.model_dump()
    assert upstream_calls(fake_upstream) == 1
    await client.close()


def test_tool_use_is_rebuilt_and_replayed_exactly(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = sync_client(gateway)
    fake_upstream.fail_next(fu.TOOL_CALLS)
    status, first, _ = ask(client, stream=True, tools=[WEATHER_TOOL])
    assert status == "miss" and first.stop_reason == "tool_use"
    (call,) = [b for b in first.content if b.type == "tool_use"]
    assert call.input == fa.TOOL_INPUT and call.name == "get_weather"  # assembled from partial JSON
    gateway.flush()
    for stream in (False, True):
        status, again, headers = ask(client, stream=stream, tools=[WEATHER_TOOL])
        assert status == "hit-l1-exact", headers
        assert again.model_dump() == first.model_dump()
    assert upstream_calls(fake_upstream) == 1


def test_thinking_blocks_are_kept_with_their_signatures(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = sync_client(gateway)
    fake_upstream.fail_next(Behaviour(fa.THINKING))
    thinking = {"type": "enabled", "budget_tokens": 1024}
    status, first, _ = ask(client, stream=True, thinking=thinking)
    assert status == "miss"
    gateway.flush()
    for stream in (True, False):
        status, again, _ = ask(client, stream=stream, thinking=thinking)
        assert status == "hit-l1-exact"
        block = again.content[0]
        assert block.type == "thinking"
        assert block.thinking == fa.THINKING_TEXT and block.signature == fa.THINKING_SIGNATURE
        assert again.model_dump() == first.model_dump()


def test_per_run_fields_do_not_split_the_cache(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = sync_client(gateway)
    marked = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    status, _, _ = ask(client, system=marked, metadata={"user_id": '{"session_id": "run-1"}'})
    assert status == "miss"
    gateway.flush()
    moved = [{"role": "user", "content": [{"type": "text", "text": QUESTION, "cache_control": {"type": "ephemeral"}}]}]
    status, _, _ = ask(client, system=[{"type": "text", "text": SYSTEM}], messages=moved,
                       metadata={"user_id": '{"session_id": "run-2"}'})
    assert status == "hit-l1-exact"
    status, _, _ = ask(client, system=[{"type": "text", "text": SYSTEM + " Really."}], messages=moved)
    assert status == "miss"  # what the model sees is in the key
    assert upstream_calls(fake_upstream) == 2


# ------------------------------------------------------------------------------ never cached


@pytest.mark.parametrize(
    ("behaviour", "stream"),
    [
        (fu.LENGTH, False), (fu.LENGTH, True),  # stop_reason max_tokens
        (fu.CONTENT_FILTER, True),  # refusal
        (Behaviour(fa.PAUSE_TURN), False),
        (fu.status(500), False), (fu.status(529), True), (fu.status(429), False),
        (fu.DISCONNECT, False), (fu.DISCONNECT, True),  # no answer / a stream cut before message_stop
        (Behaviour(fa.STREAM_ERROR), True),  # an error event inside a 200 stream
    ],
)
def test_incomplete_answers_and_errors_are_never_cached(
    gateway: RunningGateway, fake_upstream: FakeUpstream, behaviour: Behaviour, stream: bool
) -> None:
    client = sync_client(gateway)
    fake_upstream.fail_next(behaviour)
    try:
        status, message, _ = ask(client, stream=stream)
        assert message.stop_reason in {"max_tokens", "refusal", "pause_turn"}
    except anthropic.AnthropicError:
        pass  # errors reach the SDK as errors, in its own envelope or in-band
    gateway.flush()
    status, message, _ = ask(client, stream=stream)
    assert status == "miss" and message.stop_reason == "end_turn"
    assert upstream_calls(fake_upstream) == 2


def test_upstream_errors_pass_through_in_anthropics_envelope(gateway: RunningGateway, fake_upstream: FakeUpstream
                                                             ) -> None:
    fake_upstream.fail_next(fu.status(529))
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(sync_client(gateway))
    assert caught.value.status_code == 529
    assert caught.value.body == {"type": "error", "error": {"type": "overloaded_error",
                                                            "message": "fake upstream failure 529"}}
    assert caught.value.response.headers["request-id"].startswith("req_fake_")


def test_an_interrupted_stream_ends_with_an_error_event(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    fake_upstream.fail_next(fu.DISCONNECT)
    body = {"model": MODEL, "max_tokens": 10, "messages": MESSAGES, "stream": True}
    response = httpx.post(f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": "k"}, timeout=30)
    assert response.status_code == 200
    assert "event: message_stop" not in response.text
    last = response.text.strip().split("\n\n")[-1]
    assert last.startswith("event: error\ndata: ")
    assert orjson.loads(last.split("data: ", 1)[1])["type"] == "error"


# ------------------------------------------------------------------------------ bad input


def post(gateway: RunningGateway, body: bytes) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/messages", content=body, timeout=30,
                      headers={"x-api-key": "k", "content-type": "application/json", "anthropic-version": "2023-06-01"})


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b'{"model": "m", "max_tokens": 1, "messages": [', "not valid JSON"),
        (b'{"max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}', "'model'"),
        (b'{"model": ["m"], "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}', "'model'"),
        (b'{"model": "m", "max_tokens": "1", "messages": [{"role": "user", "content": "hi"}]}', "'max_tokens'"),
        (b'{"model": "m", "max_tokens": 1, "messages": "hi"}', "'messages'"),
        (b'{"model": "m", "max_tokens": 1, "stream": 1, "messages": [{"role": "user", "content": "hi"}]}', "'stream'"),
        (b'{"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}], "tools": "x"}', "'tools'"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_bad_input_gets_anthropics_envelope(
    gateway: RunningGateway, fake_upstream: FakeUpstream, body: bytes, named: str
) -> None:
    response = post(gateway, body)
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert named in error["error"]["message"]
    assert set(error) == {"type", "error"} and set(error["error"]) == {"type", "message"}
    assert upstream_calls(fake_upstream) == 0


def test_the_sdk_reads_the_gateways_errors(gateway: RunningGateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        sync_client(gateway).messages.create(model=MODEL, max_tokens=0, messages=MESSAGES)  # type: ignore[arg-type]
    assert "'max_tokens' must be a positive integer" in caught.value.message
    assert caught.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                            "message": "'max_tokens' must be a positive integer"}}


def test_an_oversize_body_is_413_in_anthropics_envelope(
    start_messages_gateway: Callable[..., RunningGateway], fake_upstream: FakeUpstream
) -> None:
    gateway = start_messages_gateway(max_body_bytes=4096)
    body = orjson.dumps({"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "x" * 5000}]})
    response = post(gateway, body)
    assert response.status_code == 413
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "request_too_large"
    with pytest.raises(anthropic.APIStatusError) as caught:
        sync_client(gateway).messages.create(model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "x" * 5000}])
    assert caught.value.status_code == 413
    assert upstream_calls(fake_upstream) == 0


# ------------------------------------------------------------------------------ pass-through, headers


def test_count_tokens_is_passed_through_and_never_cached(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = sync_client(gateway)
    for _ in range(2):
        raw = client.messages.with_raw_response.count_tokens(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        assert raw.headers["x-reflex-status"] == "bypass"
        assert raw.parse().input_tokens > 0
    calls = fake_upstream.calls_to(fa.COUNT_TOKENS_PATH)
    assert len(calls) == 2
    # the SDK's own credential header (x-api-key up to 1.x, Bearer from 2.x), forwarded as sent
    assert "sk-ant-alice" in (calls[0].headers.get("x-api-key"), calls[0].headers.get("Authorization", "")[7:])
    assert upstream_calls(fake_upstream) == 0
    # any other /v1/messages/* path is the provider's too (this one the fake does not have)
    other = httpx.get(f"{gateway.url}/v1/messages/batches", headers={"x-api-key": "k"}, timeout=30)
    assert other.status_code == 404 and other.headers["x-reflex-status"] == "bypass"


def test_version_betas_and_the_beta_query_are_forwarded_and_keyed(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    client = sync_client(gateway)

    def beta_ask(betas: list[str]) -> str:
        raw = client.beta.messages.with_raw_response.create(model=MODEL, max_tokens=10, messages=MESSAGES,
                                                             betas=betas)  # type: ignore[arg-type]
        return raw.headers["x-reflex-status"]

    assert beta_ask(["interleaved-thinking-2025-05-14", "effort-2025-11-24"]) == "miss"
    (call,) = fake_upstream.calls_to(fa.MESSAGES_PATH)
    assert call.headers["anthropic-version"] == client.default_headers["anthropic-version"]
    assert call.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14,effort-2025-11-24"
    gateway.flush()
    assert beta_ask(["effort-2025-11-24", "interleaved-thinking-2025-05-14"]) == "hit-l1-exact"  # a set
    assert beta_ask(["effort-2025-11-24"]) == "miss"  # other features, maybe another answer
    assert upstream_calls(fake_upstream) == 2
    # Claude Code calls /v1/messages?beta=true: the query reaches the provider as it was sent
    response = httpx.post(f"{gateway.url}/v1/messages?beta=true", timeout=30,
                          headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
                          json={"model": MODEL, "max_tokens": 10, "messages": MESSAGES})
    assert response.status_code == 200 and response.headers["x-reflex-status"] == "miss"
    last = fake_upstream.calls_to(fa.MESSAGES_PATH)[-1]
    assert last.headers[":query"] == "beta=true" and last.headers["anthropic-version"] == "2023-06-01"


# ------------------------------------------------------------------------------ credentials and tenants


def test_x_api_key_and_bearer_both_work_and_name_the_same_tenant(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    # Claude Code: ANTHROPIC_API_KEY sends x-api-key, ANTHROPIC_AUTH_TOKEN sends Authorization: Bearer
    # (the Python SDK 2.x sends its api_key as Bearer; x-api-key is set here by hand)
    status, _, headers = ask(sync_client(gateway, api_key=None, headers={"x-api-key": "sk-ant-carol"}))
    assert status == "miss" and headers["x-reflex-tenant"] == tenant_id("sk-ant-carol")
    (call,) = fake_upstream.calls_to(fa.MESSAGES_PATH)
    assert call.headers["x-api-key"] == "sk-ant-carol" and "Authorization" not in call.headers
    gateway.flush()
    bearer = sync_client(gateway, api_key=None, auth_token="sk-ant-carol")
    status, _, headers = ask(bearer)
    assert status == "hit-l1-exact" and headers["x-reflex-tenant"] == tenant_id("sk-ant-carol")
    status, _, _ = ask(bearer, messages=[{"role": "user", "content": "Another question"}])
    assert status == "miss"
    last = fake_upstream.calls_to(fa.MESSAGES_PATH)[-1]
    assert last.headers["Authorization"] == "Bearer sk-ant-carol" and "x-api-key" not in last.headers


def test_when_both_are_sent_x_api_key_wins_and_only_it_is_forwarded(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    response = httpx.post(f"{gateway.url}/v1/messages", timeout=30,
                          headers={"x-api-key": "sk-ant-native", "Authorization": "Bearer sk-other"},
                          json={"model": MODEL, "max_tokens": 10, "messages": MESSAGES})
    assert response.status_code == 200
    assert response.headers["x-reflex-status"] == "miss"
    assert response.headers["x-reflex-tenant"] == tenant_id("sk-ant-native")
    (call,) = fake_upstream.calls_to(fa.MESSAGES_PATH)
    assert call.headers["x-api-key"] == "sk-ant-native"
    assert "Authorization" not in call.headers  # the other credential never leaves the gateway


def test_tenants_are_isolated_and_a_client_cannot_choose_its_tenant(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    alice = sync_client(gateway, api_key="sk-ant-alice")
    assert ask(alice)[0] == "miss"
    gateway.flush()
    assert ask(alice)[0] == "hit-l1-exact"
    # bob names alice's tenant in every place a client could: a header and the metadata
    bob = sync_client(gateway, api_key="sk-ant-bob", headers={"X-Reflex-Tenant": tenant_id("sk-ant-alice")})
    status, message, headers = ask(bob, metadata={"user_id": tenant_id("sk-ant-alice")})
    assert status == "miss" and headers["x-reflex-tenant"] == tenant_id("sk-ant-bob")
    assert text_of(message).startswith("Answer #2 ")
    anonymous = httpx.post(f"{gateway.url}/v1/messages", timeout=30, headers=RAW,
                           json={"model": MODEL, "max_tokens": 256, "system": SYSTEM, "messages": MESSAGES})
    assert anonymous.headers["x-reflex-status"] == "miss" and anonymous.headers["x-reflex-tenant"] == "anonymous"
    assert upstream_calls(fake_upstream) == 3


# ------------------------------------------------------------------------------ Claude Code's shape, the mock


def sse_message(text: str) -> dict[str, Any]:
    """The message an SSE body describes, rebuilt by the gateway's own assembler's rules."""
    from services.gateway.protocols.anthropic_messages import StreamAssembler

    assembler = StreamAssembler()
    assembler.feed(text.encode())
    message = assembler.answer()
    assert message is not None, text[:500]
    return message


def test_claude_code_runs_of_one_prompt_are_exact_hits(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    url = f"{gateway.url}/v1/messages?beta=true"
    headers = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01",
               "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14", **RAW}
    first = httpx.post(url, json=shapes.main_call("How do I center a div in CSS?", session="a"),
                       headers=headers, timeout=30)
    assert first.headers["x-reflex-status"] == "miss"
    gateway.flush()
    second = httpx.post(url, json=shapes.main_call("How do I center a div in CSS?", session="b"),
                        headers=headers, timeout=30)
    assert second.headers["x-reflex-status"] == "hit-l1-exact"
    assert sse_message(second.text) == sse_message(first.text)
    title = httpx.post(url, json=shapes.title_call("How do I center a div in CSS?"), headers=headers, timeout=30)
    assert title.headers["x-reflex-status"] == "miss"
    assert orjson.loads(sse_message(title.text)["content"][0]["text"])["title"].startswith("Answer #2")
    assert upstream_calls(fake_upstream) == 2


def test_the_mock_provider_answers_messages_streaming_and_not(
    start_messages_gateway: Callable[..., RunningGateway], fake_upstream: FakeUpstream
) -> None:
    gateway = start_messages_gateway(mock_provider=True)
    client = sync_client(gateway)
    status, plain, _ = ask(client)
    assert status == "miss" and text_of(plain).startswith("[mock ") and QUESTION in text_of(plain)
    assert plain.stop_reason == "end_turn" and plain.model == MODEL
    fresh = sync_client(gateway, headers={"Cache-Control": "no-store"})
    status, streamed, _ = ask(fresh, stream=True)
    assert status == "bypass" and text_of(streamed) == text_of(plain)  # deterministic, streamed too
    gateway.flush()
    assert ask(client, stream=True)[0] == "hit-l1-exact"
    assert upstream_calls(fake_upstream) == 0  # nothing left the gateway
