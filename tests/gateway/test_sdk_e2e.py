"""End to end through the official ``openai`` SDK (sync and async, streaming and not)
against a real gateway on a free port, over both L1 backends, with the fake upstream."""

from __future__ import annotations

import re
import time
from typing import Any

import openai
import pytest

from tests.gateway.conftest import RunningGateway
from tests.support import fake_upstream as fu
from tests.support.fake_upstream import FakeUpstream

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


def ask(client: openai.OpenAI, *, stream: bool = False, messages: list[dict[str, Any]] = MESSAGES, **kwargs: Any) -> tuple[str, Any, dict[str, str]]:
    """One request; returns (X-Reflex-Status, the answer text, headers)."""
    raw = client.chat.completions.with_raw_response.create(model="fake-model", messages=messages, stream=stream, **kwargs)
    headers = dict(raw.headers)
    parsed = raw.parse()
    if stream:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in parsed if chunk.choices)
    else:
        text = parsed.choices[0].message.content
    return headers["x-reflex-status"], text, headers


def lookup_seconds(gateway: RunningGateway) -> tuple[float, float]:
    """(count, sum) of the gateway's own total-lookup timings (reflex_gateway_lookup_seconds)."""
    registry = gateway.state.metrics.registry
    labels = {"stage": "total"}
    count = registry.get_sample_value("reflex_gateway_lookup_seconds_count", labels) or 0.0
    total = registry.get_sample_value("reflex_gateway_lookup_seconds_sum", labels) or 0.0
    return count, total


def timed_ask(gateway: RunningGateway, client: openai.OpenAI) -> tuple[str, Any, dict[str, str], float, float]:
    """ask(), plus the client's round trip and the lookup time the gateway measured, in ms."""
    count, total = lookup_seconds(gateway)
    started = time.perf_counter()
    status, text, headers = ask(client)
    round_trip_ms = (time.perf_counter() - started) * 1000
    new_count, new_total = lookup_seconds(gateway)
    assert new_count == count + 1  # one lookup per request
    return status, text, headers, round_trip_ms, (new_total - total) * 1000


def assert_lookup_ms(headers: dict[str, str], round_trip_ms: float, measured_ms: float) -> None:
    """X-Reflex-Lookup-Ms is the lookup the gateway timed (and exported as a metric), in ms to the
    microsecond: a real, non-zero duration within the request's round trip."""
    lookup_ms = headers["x-reflex-lookup-ms"]
    assert re.fullmatch(r"\d+\.\d{3}", lookup_ms), lookup_ms
    assert float(lookup_ms) == pytest.approx(measured_ms, abs=0.0015)
    assert 0 < float(lookup_ms) < round_trip_ms


def test_miss_then_l1_hit_with_one_upstream_call_sync(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = gateway.sync_client()
    status, first, headers, round_trip_ms, measured_ms = timed_ask(gateway, client)
    assert status == "miss"
    assert first == "Answer #1 to: What is the capital of France?"
    assert_lookup_ms(headers, round_trip_ms, measured_ms)
    gateway.flush()
    status, second, headers, round_trip_ms, measured_ms = timed_ask(gateway, client)
    assert status == "hit-l1-exact"
    assert second == first  # the same call number: a replay, not a fresh answer
    assert_lookup_ms(headers, round_trip_ms, measured_ms)
    # The provider's usage of the cached call, which the hit did not pay again: the fake upstream
    # bills 11 prompt tokens and one completion token per word of its answer.
    assert int(headers["x-reflex-tokens-saved"]) == 11 + len(first.split()) == 20
    assert fake_upstream.chat_count == 1


async def test_miss_then_l1_hit_async(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = gateway.async_client()
    first = await client.chat.completions.with_raw_response.create(model="fake-model", messages=MESSAGES)
    assert first.headers["x-reflex-status"] == "miss"
    gateway.flush()
    second = await client.chat.completions.with_raw_response.create(model="fake-model", messages=MESSAGES)
    assert second.headers["x-reflex-status"] == "hit-l1-exact"
    assert second.parse().model_dump() == first.parse().model_dump()
    assert fake_upstream.chat_count == 1
    await client.close()


def test_streamed_miss_replayed_to_streaming_and_plain_clients(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = gateway.sync_client()
    status, streamed, _ = ask(client, stream=True, stream_options={"include_usage": True})
    assert status == "miss"
    assert streamed == "Answer #1 to: What is the capital of France?"
    gateway.flush()

    raw = client.chat.completions.with_raw_response.create(
        model="fake-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["x-reflex-status"] == "hit-l1-exact"
    chunks = list(raw.parse())
    assert {c.id for c in chunks} == {chunks[0].id}  # one stable id
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == streamed
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 11

    status, plain, _ = ask(client, stream=False)
    assert status == "hit-l1-exact"
    assert plain == streamed
    assert fake_upstream.chat_count == 1


async def test_plain_miss_replayed_as_stream_async(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = gateway.async_client()
    first = await client.chat.completions.create(model="fake-model", messages=MESSAGES)
    gateway.flush()
    stream = await client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == first.choices[0].message.content
    assert fake_upstream.chat_count == 1
    await client.close()


def test_n_choices_and_tool_calls_survive_stream_assembly(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = gateway.sync_client()
    fake_upstream.fail_next(fu.TOOL_CALLS)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
    stream = client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True, n=2, tools=tools)
    list(stream)
    gateway.flush()
    raw = client.chat.completions.with_raw_response.create(model="fake-model", messages=MESSAGES, n=2, tools=tools)
    assert raw.headers["x-reflex-status"] == "hit-l1-exact"
    completion = raw.parse()
    assert [c.index for c in completion.choices] == [0, 1]
    for choice in completion.choices:
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather"
        assert call.function.arguments == '{"city": "Paris", "unit": "c"}'
    # and replayed as a stream, the SDK reassembles the same calls
    chunks = list(client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True, n=2, tools=tools))
    args = {i: "" for i in (0, 1)}
    for chunk in chunks:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                args[choice.index] += call.function.arguments or ""
    assert args == {0: '{"city": "Paris", "unit": "c"}', 1: '{"city": "Paris", "unit": "c"}'}
    assert fake_upstream.chat_count == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    "behaviour", [fu.status(500), fu.status(429), fu.LENGTH, fu.CONTENT_FILTER], ids=["500", "429", "length", "content_filter"]
)
def test_errors_and_truncated_answers_are_never_cached(
    gateway: RunningGateway, fake_upstream: FakeUpstream, behaviour: fu.Behaviour, stream: bool
) -> None:
    client = gateway.sync_client()
    fake_upstream.fail_next(behaviour)
    if behaviour.kind == "status":
        with pytest.raises(openai.APIStatusError) as caught:
            ask(client, stream=stream)
        assert caught.value.status_code == behaviour.status
        assert caught.value.body["message"] == f"fake upstream failure {behaviour.status}"  # passed through
    else:
        status, _, _ = ask(client, stream=stream)
        assert status == "miss"
    gateway.flush()
    status, text, _ = ask(client, stream=stream)
    assert status == "miss"
    assert text == "Answer #2 to: What is the capital of France?"
    assert fake_upstream.chat_count == 2


def test_interrupted_stream_is_never_cached(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = gateway.sync_client()
    fake_upstream.fail_next(fu.DISCONNECT)
    with pytest.raises(openai.APIError):
        ask(client, stream=True)
    gateway.flush()
    status, text, _ = ask(client, stream=True)
    assert status == "miss"
    assert text.startswith("Answer #2")


def test_tenant_isolation(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    alice, bob = gateway.sync_client("sk-test-alice"), gateway.sync_client("sk-test-bob")
    _, alice_text, alice_headers = ask(alice)
    gateway.flush()
    status, bob_text, bob_headers = ask(bob)
    assert status == "miss"
    assert bob_text != alice_text
    assert alice_headers["x-reflex-tenant"] != bob_headers["x-reflex-tenant"]
    assert "sk-test-alice" not in alice_headers["x-reflex-tenant"]
    # Anthropic-style x-api-key names the same tenant as the Bearer key
    raw = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0).chat.completions.with_raw_response.create(
        model="fake-model", messages=MESSAGES, extra_headers={"Authorization": "", "x-api-key": "sk-test-alice"}
    )
    assert raw.headers["x-reflex-tenant"] == alice_headers["x-reflex-tenant"]
    assert raw.headers["x-reflex-status"] == "hit-l1-exact"


@pytest.mark.parametrize(
    ("headers", "looks_up", "stores"),
    [
        ({"Cache-Control": "no-cache"}, False, True),
        ({"X-Reflex-Cache": "refresh"}, False, True),
        ({"Cache-Control": "no-store"}, False, False),
        ({"X-Reflex-Cache": "bypass"}, False, False),
    ],
    ids=["no-cache", "refresh", "no-store", "bypass"],
)
def test_cache_control(
    gateway: RunningGateway, fake_upstream: FakeUpstream, headers: dict[str, str], looks_up: bool, stores: bool
) -> None:
    client = gateway.sync_client()
    ask(client, messages=[{"role": "user", "content": "seed"}])  # an entry exists for "seed"
    gateway.flush()
    status, text, _ = ask(client, messages=[{"role": "user", "content": "seed"}], extra_headers=headers)
    assert status == "bypass"
    assert text == "Answer #2 to: seed"  # not served from cache
    gateway.flush()
    status, text, _ = ask(client, messages=[{"role": "user", "content": "seed"}])
    assert status == "hit-l1-exact"
    assert text == ("Answer #2 to: seed" if stores else "Answer #1 to: seed")  # refresh overwrote the entry

    status, _, _ = ask(client, messages=[{"role": "user", "content": "fresh"}], extra_headers=headers)
    gateway.flush()
    status, _, _ = ask(client, messages=[{"role": "user", "content": "fresh"}])
    assert status == ("hit-l1-exact" if stores else "miss")


def test_models_passthrough_and_fields_forwarded_untouched(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = gateway.sync_client()
    assert [m.id for m in client.models.list()] == ["fake-model"]
    extra = {"temperature": 0.2, "seed": 7, "stop": ["\n\n"], "max_completion_tokens": 50, "response_format": {"type": "text"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    client.chat.completions.create(model="fake-model", messages=messages, extra_body={"unknown_field": {"x": [1, 2]}}, user="u1", **extra)
    (call,) = fake_upstream.chat_calls
    assert call.body == {"model": "fake-model", "messages": messages, "unknown_field": {"x": [1, 2]}, "user": "u1", **extra}
    assert call.headers["Authorization"] == "Bearer sk-test-alice"  # the caller pays for its misses


def test_unrelated_fields_share_one_entry(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = gateway.sync_client()
    ask(client, user="first-user")
    gateway.flush()
    status, _, _ = ask(client, user="other-user", metadata={"trace": "x"}, store=False)
    assert status == "hit-l1-exact"
    status, _, _ = ask(client, temperature=0.9)  # answer-changing parameter: a different entry
    assert status == "miss"
