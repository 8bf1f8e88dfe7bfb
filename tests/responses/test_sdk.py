"""``client.responses.create`` of the official ``openai`` SDK (sync and async, streaming and not)
against a real gateway over the fake upstream, on both L1 backends: hits in the Responses wire
format, what is passed through uncached, what is never stored, and bad input in OpenAI's envelope."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.gateway.conftest import RAW, RunningGateway
from tests.responses.codex_request import PROMPT, TITLE_FORMAT
from tests.support import fake_responses
from tests.support import fake_upstream as fu
from tests.support.fake_upstream import FakeUpstream

QUESTION = "What is the capital of France?"
ANSWER_1 = f"Answer #1 to: {QUESTION}"
PATH = "/v1/responses"
# store=False: the only requests Reflex serves from cache (see openai_responses.py on `store`)
ASK: dict[str, Any] = {"model": "fake-model", "input": QUESTION, "instructions": "Be brief.", "store": False}


def upstream_calls(fake: FakeUpstream) -> int:
    return len(fake.calls_to(PATH))


def create(client: openai.OpenAI, **kwargs: Any) -> tuple[str, Any, dict[str, str]]:
    """One request; returns (X-Reflex-Status, the Response (a stream's completed one), headers)."""
    raw = client.responses.with_raw_response.create(**{**ASK, **kwargs})
    parsed = raw.parse()
    if kwargs.get("stream"):
        events = list(parsed)
        assert events[-1].type == "response.completed", [e.type for e in events]
        parsed = events[-1].response
        assert parsed.output_text == "".join(e.delta for e in events if e.type == "response.output_text.delta")
    return raw.headers["x-reflex-status"], parsed, dict(raw.headers)


def not_cached(gateway: RunningGateway, reason: str) -> float:
    return gateway.state.metrics.registry.get_sample_value("reflex_gateway_not_cached_total", {"reason": reason}) or 0.0


def test_miss_then_exact_hit_sync(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = gateway.sync_client()
    status, first, headers = create(client)
    assert status == "miss" and first.output_text == ANSWER_1 and first.status == "completed"
    gateway.flush()
    status, second, headers = create(client)
    assert status == "hit-l1-exact"
    assert second.model_dump() == first.model_dump()  # the answer as the provider gave it
    assert headers["x-reflex-entry-id"]
    # the usage the answer first had (agents track their context window by it) ...
    assert second.usage.input_tokens == fake_responses.INPUT_TOKENS
    # ... and what the hit saved
    assert int(headers["x-reflex-tokens-saved"]) == fake_responses.INPUT_TOKENS + len(ANSWER_1.split())
    assert upstream_calls(fake_upstream) == 1


async def test_miss_then_exact_hit_async_streaming_and_not(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = gateway.async_client()
    stream = await client.responses.create(**ASK, stream=True)
    streamed = [event async for event in stream]
    assert streamed[-1].type == "response.completed" and streamed[-1].response.output_text == ANSWER_1
    gateway.flush()
    raw = await client.responses.with_raw_response.create(**ASK)
    assert raw.headers["x-reflex-status"] == "hit-l1-exact"
    assert raw.parse().output_text == ANSWER_1
    raw = await client.responses.with_raw_response.create(**ASK, stream=True)
    assert raw.headers["x-reflex-status"] == "hit-l1-exact"
    replayed = [event async for event in raw.parse()]
    assert replayed[-1].response.output_text == ANSWER_1
    assert upstream_calls(fake_upstream) == 1
    await client.close()


def test_a_streamed_miss_serves_plain_and_streaming_clients(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = gateway.sync_client()
    status, streamed, _ = create(client, stream=True)
    assert status == "miss" and streamed.output_text == ANSWER_1
    gateway.flush()
    status, plain, _ = create(client)
    assert status == "hit-l1-exact" and plain.model_dump() == streamed.model_dump()

    raw = client.responses.with_raw_response.create(**ASK, stream=True)
    assert raw.headers["x-reflex-status"] == "hit-l1-exact"
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = list(raw.parse())
    types = [e.type for e in events]
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.delta", "response.output_text.done",
                     "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert {e.response.id for e in events if hasattr(e, "response")} == {streamed.id}
    assert upstream_calls(fake_upstream) == 1


def test_a_plain_miss_serves_a_streaming_client_and_the_stream_helper(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    client = gateway.sync_client()
    status, plain, _ = create(client)
    assert status == "miss"
    gateway.flush()
    status, streamed, _ = create(client, stream=True)
    assert status == "hit-l1-exact" and streamed.output_text == plain.output_text == ANSWER_1
    # the SDK's accumulating helper checks item and response identities across events
    with client.responses.stream(**ASK) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == ANSWER_1
    assert upstream_calls(fake_upstream) == 1


def test_function_calls_are_replayed_exactly(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = gateway.sync_client()
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    fake_upstream.fail_next(fu.TOOL_CALLS)
    status, first, _ = create(client, tools=tools, stream=True)
    assert status == "miss" and first.output[0].type == "function_call"
    gateway.flush()
    status, plain, _ = create(client, tools=tools)
    assert status == "hit-l1-exact"
    (call,) = plain.output
    assert (call.type, call.name, call.arguments, call.call_id) == (
        "function_call", "get_weather", fake_responses.TOOL_ARGUMENTS, "call_fake_1")
    with client.responses.stream(**ASK, tools=tools) as stream:
        arguments = "".join(e.delta for e in stream if e.type == "response.function_call_arguments.delta")
        final = stream.get_final_response()
    assert arguments == final.output[0].arguments == fake_responses.TOOL_ARGUMENTS
    assert upstream_calls(fake_upstream) == 1


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"previous_response_id": "resp_fake_0"}, "previous_response_id"),
        ({"conversation": "conv_123"}, "conversation"),
        ({"background": True}, "background"),
        ({"store": True}, "store"),
        ({"store": openai.omit}, "store"),  # absent: the API's default is store=true
    ],
    ids=["previous_response_id", "conversation", "background", "store-true", "store-absent"],
)
def test_requests_on_upstream_state_pass_through_uncached(
    gateway: RunningGateway, fake_upstream: FakeUpstream, extra: dict[str, Any], reason: str
) -> None:
    client = gateway.sync_client()
    before = gateway.state.metrics.registry.get_sample_value(
        "reflex_gateway_not_cached_total", {"reason": reason}) or 0.0
    for number in (1, 2):
        status, response, _ = create(client, **extra)
        gateway.flush()
        assert status == "bypass"
        assert response.output_text == f"Answer #{number} to: {QUESTION}"  # a fresh answer each time
    assert upstream_calls(fake_upstream) == 2
    assert not_cached(gateway, reason) == before + 2
    for key, value in extra.items():
        if value is not openai.omit:
            assert fake_upstream.calls_to(PATH)[-1].body[key] == value  # forwarded untouched
    # and nothing was stored for the cacheable twin either
    assert create(client)[0] == "miss"


def test_stored_responses_and_sub_paths_pass_through(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = gateway.sync_client()
    created = client.responses.create(**{**ASK, "store": True})
    fetched = client.responses.with_raw_response.retrieve(created.id)
    assert fetched.headers["x-reflex-status"] == "bypass"
    assert fetched.parse().model_dump() == created.model_dump()
    assert fake_upstream.calls[-1].path == f"{PATH}/{created.id}"
    assert fake_upstream.calls[-1].headers["Authorization"] == "Bearer sk-test-alice"  # the caller's key
    assert list(client.responses.input_items.list(created.id)) == []
    assert client.responses.delete(created.id) is None
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve(created.id)
    assert caught.value.status_code == 404 and "No response found" in caught.value.message


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    "behaviour",
    [fu.status(500), fu.LENGTH, fu.CONTENT_FILTER, fu.Behaviour(fake_responses.FAILED), fu.DISCONNECT],
    ids=["500", "incomplete-length", "incomplete-filter", "failed", "disconnect"],
)
def test_failed_and_incomplete_answers_are_never_cached(
    gateway: RunningGateway, fake_upstream: FakeUpstream, behaviour: fu.Behaviour, stream: bool
) -> None:
    client = gateway.sync_client()
    fake_upstream.fail_next(behaviour)
    try:
        raw = client.responses.with_raw_response.create(**ASK, stream=stream)
        parsed = raw.parse()
        events = list(parsed) if stream else []
        if not stream:
            assert parsed.status != "completed"
        else:
            assert events[-1].type != "response.completed"
    except openai.APIError:
        pass  # a 500, a dropped connection, an in-band stream error: the SDK raises, as it should
    gateway.flush()
    status, response, _ = create(client)
    assert status == "miss" and response.output_text == f"Answer #2 to: {QUESTION}"


def test_a_stream_error_event_is_relayed_and_not_cached(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = gateway.sync_client()
    fake_upstream.fail_next(fu.Behaviour(fake_responses.STREAM_ERROR))
    events = list(client.responses.create(**ASK, stream=True))
    assert events[-1].type == "error" and events[-1].message == "The fake upstream broke mid-stream."
    gateway.flush()
    assert create(client)[0] == "miss"


def test_a_chat_answer_is_never_served_to_responses(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = gateway.sync_client()
    chat = client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": QUESTION}])
    assert chat.choices[0].message.content == ANSWER_1
    gateway.flush()
    status, response, _ = create(client, input=QUESTION, instructions=openai.omit)
    assert status == "miss" and response.output_text == f"Answer #2 to: {QUESTION}"
    gateway.flush()
    raw = client.chat.completions.with_raw_response.create(model="fake-model",
                                                           messages=[{"role": "user", "content": QUESTION}])
    assert raw.headers["x-reflex-status"] == "hit-l1-exact" and raw.parse().choices[0].message.content == ANSWER_1


def test_title_call_and_main_call_never_share_an_entry(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    client = gateway.sync_client()
    status, main, _ = create(client, input=PROMPT)
    assert status == "miss"
    gateway.flush()
    status, title, _ = create(client, input=PROMPT, text={"format": TITLE_FORMAT})
    assert status == "miss" and orjson.loads(title.output_text) == {"title": f"Answer #2 to: {PROMPT}"[:60]}
    gateway.flush()
    assert create(client, input=PROMPT, text={"format": TITLE_FORMAT})[1].output_text == title.output_text
    assert create(client, input=PROMPT)[1].output_text == main.output_text


# ------------------------------------------------------------------------------ bad input


def post(gateway: RunningGateway, body: bytes) -> httpx.Response:
    return httpx.post(gateway.url + PATH, content=body, timeout=10,
                      headers={"Authorization": "Bearer sk-test-alice", "Content-Type": "application/json", **RAW})


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b'{"input": "hi", "store": false}', "missing_required_parameter", "model"),
        (b'{"model": "m", "input": 42}', "invalid_type", "input"),
        (b'{"model": "m", "input": "hi", "instructions": 1}', "invalid_type", "instructions"),
        (b'{"model": "m", "input": "hi", "stream": "yes"}', "invalid_type", "stream"),
        (b'{"model": "m", "input": "hi", "tools": "all"}', "invalid_type", "tools"),
        (b'{"model": "m", "input": [{"role": "user", "content": {"text": "hi"}}]}', "invalid_type", "input[0].content"),
    ],
)
def test_bad_input_gets_openais_envelope(
    gateway: RunningGateway, fake_upstream: FakeUpstream, body: bytes, code: str, param: str | None
) -> None:
    response = post(gateway, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert error["message"]
    assert upstream_calls(fake_upstream) == 0


def test_the_sdk_reads_a_bad_request(gateway: RunningGateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.sync_client().responses.create(model="fake-model", input=42)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_type" and caught.value.param == "input"


def test_an_oversize_body_is_413_in_openais_envelope(
    start_gateway: Callable[..., RunningGateway], fake_upstream: FakeUpstream
) -> None:
    gateway = start_gateway(max_body_bytes=4096)
    response = post(gateway, orjson.dumps({**ASK, "input": "x" * 8000}))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert upstream_calls(fake_upstream) == 0


def test_the_mock_provider_answers_responses_streaming_and_not(
    start_gateway: Callable[..., RunningGateway], fake_upstream: FakeUpstream
) -> None:
    gateway = start_gateway(mock_provider=True)
    client = gateway.sync_client()
    status, plain, _ = create(client)
    assert status == "miss" and plain.status == "completed"
    assert plain.output_text.startswith("[mock ") and plain.output_text.endswith(f"You asked: {QUESTION}")
    status, streamed, _ = create(client, input="Another question?", stream=True)
    assert status == "miss" and streamed.output_text.endswith("You asked: Another question?")
    gateway.flush()
    status, again, _ = create(client, stream=True)
    assert status == "hit-l1-exact" and again.output_text == plain.output_text
    status, stored, _ = create(client, store=True)  # passed through: the mock answers it too
    assert status == "bypass" and stored.output_text == plain.output_text  # deterministic
    assert upstream_calls(fake_upstream) == 0  # nothing left the gateway
