"""The Responses adapter's pure logic: the exact key (property tests), the question and its
context, what may be cached, stream assembly at any chunk boundary, and replay."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.gateway.errors import ErrorKind, GatewayError
from services.gateway.keys import RequestKeys
from services.gateway.protocols import all_protocols
from services.gateway.protocols.base import HitReason, ParsedRequest, SseParser
from services.gateway.protocols.openai_chat import ChatCompletions
from services.gateway.protocols.openai_responses import (
    Responses,
    ResponsesStreamAssembler,
    replay_events,
)
from tests.responses.codex_request import (
    ENVIRONMENT,
    PROMPT,
    TITLE_FORMAT,
    codex_request,
    message,
    title_request,
)
from tests.support import fake_responses
from tests.support.fake_upstream import OK, TOOL_CALLS, Behaviour

RESPONSES = Responses()


def parse(request: dict[str, Any]) -> ParsedRequest:
    return RESPONSES.parse(orjson.dumps(request))


def keys(request: dict[str, Any]) -> RequestKeys:
    return RequestKeys.of("tenant", parse(request))


def test_registered_once_with_its_route_and_upstream() -> None:
    (adapter,) = [p for p in all_protocols() if p.name == "openai.responses"]
    assert (adapter.route, adapter.upstream_path, adapter.upstream.value, adapter.dialect.value) == (
        "/v1/responses", "/responses", "openai", "openai")


# ------------------------------------------------------------------------------ the exact key

# Per-run values, as Codex and the SDKs vary them: none of them may change the key.
texts = st.text(min_size=0, max_size=12)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**53), 2**53) | texts,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                           max_leaves=6)


@st.composite
def per_run_variant(draw: st.DrawFn, request: dict[str, Any]) -> dict[str, Any]:
    """``request`` with every per-run value redrawn: item ids (also nested ones), cache markers
    anywhere, prompt_cache_key, client_metadata, user, safety_identifier, metadata, stream."""
    variant = copy.deepcopy(request)
    for item in variant["input"]:
        if draw(st.booleans()):
            item["id"] = draw(texts)
        else:
            item.pop("id", None)
        for part in item.get("content") or []:
            if draw(st.booleans()):
                part["id"] = draw(texts)
            if draw(st.booleans()):
                part["cache_control"] = {"type": "ephemeral"}
        if draw(st.booleans()):
            item["cache_control"] = {"type": draw(texts)}
    for tool in variant.get("tools") or []:
        if draw(st.booleans()):
            tool["cache_control"] = {"type": "ephemeral"}
    for name in ("prompt_cache_key", "user", "safety_identifier"):
        if draw(st.booleans()):
            variant[name] = draw(texts)
        else:
            variant.pop(name, None)
    for name in ("client_metadata", "metadata"):
        variant[name] = draw(st.dictionaries(texts, texts, max_size=4))
    variant["stream"] = draw(st.booleans())
    if draw(st.booleans()):
        variant["stream_options"] = {"include_obfuscation": draw(st.booleans())}
    # key order never matters either
    return dict(draw(st.permutations(list(variant.items()))))


# What the issue names per-run (and transport): written out here, not imported, so that a field
# wrongly added to the adapter's list makes the property test below fail.
PER_RUN_FIELDS = frozenset({"prompt_cache_key", "client_metadata", "user", "safety_identifier", "metadata",
                            "stream", "stream_options", "store"})


def _is_per_run(path: tuple[Any, ...]) -> bool:
    return (path[0] in PER_RUN_FIELDS or "cache_control" in path
            or (path[0] == "input" and path[-1] == "id"))


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into ``value``: containers and leaves."""
    if path:
        yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


def _changed(value: Any, draw: st.DrawFn) -> Any:
    """A value that is surely different from ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + draw(st.integers(1, 5))
    if isinstance(value, str):
        return value + draw(st.text(min_size=1, max_size=5))
    if isinstance(value, list):
        return [*value, draw(json_values)]
    if isinstance(value, dict):
        return {**value, "added_" + draw(texts): draw(json_values)}
    return draw(st.text(min_size=1, max_size=5))  # None


@st.composite
def model_visible_change(draw: st.DrawFn, request: dict[str, Any]) -> dict[str, Any]:
    """``request`` with one thing the model sees changed: a value anywhere, a field removed, or
    a new field, at any depth except the per-run fields."""
    variant = copy.deepcopy(request)
    paths = [p for p in _paths(variant) if not _is_per_run(p)]
    path = draw(st.sampled_from(paths))
    parent = variant
    for step in path[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = _changed(parent[path[-1]], draw)
    if draw(st.booleans()):
        variant["new_field_" + draw(texts)] = draw(json_values)  # an unknown field counts too
    return variant


def _canonical_or_none(request: dict[str, Any]) -> bytes | None:
    try:
        return parse(request).canonical
    except GatewayError:
        return None  # the change made the request invalid: it is never keyed at all


BASE = codex_request()
PLAIN = {"model": "gpt-4.1", "input": "What is a monad?", "instructions": "Be brief.", "store": False,
         "temperature": 0.2, "text": {"format": {"type": "text"}, "verbosity": "low"}}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_per_run_values_never_change_the_key(data: st.DataObject) -> None:
    variant = data.draw(per_run_variant(BASE))
    assert parse(variant).canonical == parse(BASE).canonical
    assert keys(variant).l1_key == keys(BASE).l1_key
    assert keys(variant).context_hash == keys(BASE).context_hash


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from([BASE, PLAIN]))
def test_anything_the_model_sees_changes_the_key(data: st.DataObject, request: dict[str, Any]) -> None:
    variant = data.draw(model_visible_change(request))
    canonical = _canonical_or_none(variant)
    assert canonical is None or canonical != parse(request).canonical


def test_two_codex_runs_share_one_key_and_one_context() -> None:
    first, second = codex_request(), codex_request()
    assert first["input"][0]["id"] != second["input"][0]["id"]  # the runs do differ
    assert first["prompt_cache_key"] != second["prompt_cache_key"]
    assert keys(first) == keys(second)
    assert keys(codex_request(stream=False)).l1_key == keys(first).l1_key  # stream is not the answer


def test_what_the_model_sees_stays_in_the_key() -> None:
    base = keys(BASE).l1_key
    changes = {
        "date": codex_request(environment=ENVIRONMENT.replace("2026-12-01", "2026-12-02")),
        "effort": {**BASE, "reasoning": {"effort": "high", "summary": "auto"}},
        "model": {**BASE, "model": "gpt-5"},
        "tools": {**BASE, "tools": BASE["tools"][:1]},
        "output format": {**BASE, "text": {"format": TITLE_FORMAT}},
        "include": {**BASE, "include": []},
        "tool choice": {**BASE, "tool_choice": "none"},
        "instructions": {**BASE, "instructions": "Answer in French."},
    }
    for name, request in changes.items():
        assert keys(request).l1_key != base, name


def test_the_protocol_is_in_every_key_and_context() -> None:
    chat = ChatCompletions().parse(orjson.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": PROMPT}]}))
    responses = parse({"model": "gpt-4.1", "input": PROMPT, "store": False})
    assert chat.question == responses.question == PROMPT
    assert responses.context.startswith(b"openai.responses\n")
    assert RequestKeys.of("t", chat).context_hash != RequestKeys.of("t", responses).context_hash
    assert RequestKeys.of("t", chat).l1_key != RequestKeys.of("t", responses).l1_key


# ------------------------------------------------------------------------------ question and context


def test_the_question_is_the_last_user_text_without_the_environment() -> None:
    request = parse(BASE)
    assert request.question == PROMPT
    assert ENVIRONMENT.encode() in request.context or b"environment_context" in request.context
    # the same message may carry the environment next to the prompt (older Codex versions)
    inline = copy.deepcopy(BASE)
    inline["input"][-1] = message("user", ENVIRONMENT, PROMPT)
    assert parse(inline).question == PROMPT
    assert parse({"model": "m", "input": PROMPT}).question == PROMPT


def test_a_rewording_keeps_the_context_and_the_rest_changes_it() -> None:
    context = keys(BASE).context_hash
    assert keys(codex_request("How can I center a div using CSS?")).context_hash == context
    inline_a, inline_b = copy.deepcopy(BASE), copy.deepcopy(BASE)
    inline_a["input"][-1] = message("user", ENVIRONMENT, PROMPT)
    inline_b["input"][-1] = message("user", ENVIRONMENT.replace("/work/demo", "/work/other"), PROMPT)
    assert parse(inline_a).question == parse(inline_b).question
    assert keys(inline_a).context_hash != keys(inline_b).context_hash  # stripped parts are context
    for other in (codex_request(environment=ENVIRONMENT.replace("bash", "zsh")),
                  {**BASE, "tools": []}, {**BASE, "instructions": "x"}, {**BASE, "model": "o3"}):
        assert keys(other).context_hash != context


def test_title_calls_have_their_own_context() -> None:
    main, title = parse(codex_request()), parse(title_request())
    assert main.question == title.question == PROMPT
    assert keys(codex_request()).context_hash != keys(title_request()).context_hash
    plain = {"model": "m", "input": PROMPT, "store": False}
    assert keys(plain).context_hash != keys({**plain, "text": {"format": TITLE_FORMAT}}).context_hash
    assert keys(plain).context_hash != keys({**plain, "text": {"format": {"type": "json_object"}}}).context_hash


def test_trailing_developer_messages_go_to_the_context() -> None:
    trailing = copy.deepcopy(BASE)
    trailing["input"].append(message("developer", "Reply in one line."))
    assert parse(trailing).question == PROMPT
    assert keys(trailing).context_hash != keys(BASE).context_hash
    reworded = codex_request("How can I center a div using CSS?")
    reworded["input"].append(message("system", "Reply in one line."))
    trailing["input"][-1] = message("system", "Reply in one line.")
    assert keys(reworded).context_hash == keys(trailing).context_hash


@pytest.mark.parametrize(
    "last",
    [
        {"type": "function_call_output", "call_id": "call_1", "output": "exit 0"},
        {"type": "function_call", "call_id": "call_1", "name": "exec_command", "arguments": "{}"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sure,"}]},
        {"type": "reasoning", "summary": []},
        {"role": "user", "content": [{"type": "input_text", "text": PROMPT},
                                     {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
        {"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]},
        {"role": "user", "content": "   "},
        {"role": "user", "content": [{"type": "input_text", "text": ENVIRONMENT}]},
    ],
    ids=["tool-output", "tool-call", "assistant", "reasoning", "image", "file", "whitespace", "environment-only"],
)
def test_exact_tier_only(last: dict[str, Any]) -> None:
    request = copy.deepcopy(BASE)
    request["input"].append(last)
    parsed = parse(request)
    assert parsed.question is None and parsed.cacheable  # L1 still serves the exact repeat
    assert keys(request).scope is None


# ------------------------------------------------------------------------------ what may be cached


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"conversation": "conv_123"}, "conversation"),
        ({"conversation": {"id": "conv_123"}}, "conversation"),
        ({"background": True}, "background"),
        ({"prompt": {"id": "pmpt_1", "version": "2"}}, "stored_prompt"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}, {"role": "user", "content": "Go on"}]}, "item_reference"),
        ({"store": True}, "store"),
        ({"store": None}, "store"),
    ],
)
def test_upstream_state_and_stored_responses_bypass_the_cache(extra: dict[str, Any], reason: str) -> None:
    parsed = parse({**PLAIN, **extra})
    assert not parsed.cacheable and parsed.uncacheable_reason == reason


def test_store_absent_is_store_true_and_bypasses() -> None:
    request = {k: v for k, v in PLAIN.items() if k != "store"}
    assert parse(request).uncacheable_reason == "store"
    assert parse(PLAIN).cacheable and parse({**PLAIN, "background": False, "previous_response_id": None}).cacheable


@pytest.mark.parametrize(
    ("body", "kind", "param"),
    [
        (b"", ErrorKind.INVALID_JSON, None),
        (b"{not json", ErrorKind.INVALID_JSON, None),
        (b"[1, 2]", ErrorKind.INVALID_JSON, None),
        (b'{"input": "hi"}', ErrorKind.MISSING_FIELD, "model"),
        (b'{"model": 5, "input": "hi"}', ErrorKind.WRONG_TYPE, "model"),
        (b'{"model": "m", "input": 42}', ErrorKind.WRONG_TYPE, "input"),
        (b'{"model": "m", "input": ["hi"]}', ErrorKind.WRONG_TYPE, "input[0]"),
        (b'{"model": "m", "input": [{"role": "robot", "content": "hi"}]}', ErrorKind.INVALID_REQUEST, "input[0].role"),
        (b'{"model": "m", "input": [{"role": "user", "content": 7}]}', ErrorKind.WRONG_TYPE, "input[0].content"),
        (b'{"model": "m", "input": "hi", "instructions": ["x"]}', ErrorKind.WRONG_TYPE, "instructions"),
        (b'{"model": "m", "input": "hi", "stream": "true"}', ErrorKind.WRONG_TYPE, "stream"),
        (b'{"model": "m", "input": "hi", "store": 0}', ErrorKind.WRONG_TYPE, "store"),
        (b'{"model": "m", "input": "hi", "background": "yes"}', ErrorKind.WRONG_TYPE, "background"),
        (b'{"model": "m", "input": "hi", "tools": {}}', ErrorKind.WRONG_TYPE, "tools"),
        (b'{"model": "m", "input": "hi", "text": "json"}', ErrorKind.WRONG_TYPE, "text"),
    ],
)
def test_bad_requests_are_refused_with_what_is_wrong(body: bytes, kind: ErrorKind, param: str | None) -> None:
    with pytest.raises(GatewayError) as caught:
        RESPONSES.parse(body)
    assert caught.value.kind is kind and caught.value.param == param


# ------------------------------------------------------------------------------ answers


def answer(behaviour: Behaviour = OK, number: int = 1, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return fake_responses.response(number, body or {**PLAIN, "stream": True}, behaviour)


def test_only_completed_answers_are_stored() -> None:
    assert RESPONSES.is_complete(answer())
    assert RESPONSES.is_complete(answer(TOOL_CALLS))
    for kind in ("length", "content_filter", fake_responses.FAILED):
        assert not RESPONSES.is_complete(answer(Behaviour(kind)))
    broken = [
        {**answer(), "incomplete_details": {"reason": "max_output_tokens"}},
        {**answer(), "error": {"code": "server_error", "message": "x"}},
        {**answer(), "output": []},
        {**answer(), "status": "in_progress"},
        {**answer(), "output": [{**answer()["output"][0], "status": "incomplete"}]},
    ]
    for response in broken:
        assert not RESPONSES.is_complete(response)


@pytest.mark.parametrize("kind", ["function_call", "custom_tool_call", "local_shell_call", "web_search_call",
                                  "mcp_approval_request", "computer_call"])
def test_any_call_item_means_exact_tier_only(kind: str) -> None:
    response = answer()
    response["output"].insert(0, {"type": kind, "id": "x_1", "status": "completed"})
    assert RESPONSES.calls_tools(response)
    assert RESPONSES.raw_reason(response, parse(PLAIN)) is HitReason.TOOL_CALLS
    assert not RESPONSES.calls_tools(answer())
    reasoning = answer()
    reasoning["output"].insert(0, {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "abc"})
    assert not RESPONSES.calls_tools(reasoning)


def _events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [(event, orjson.loads(payload)) for event, payload in SseParser().feed(data)]


def test_stream_assembly_is_the_completed_response() -> None:
    response = answer()
    assembler = ResponsesStreamAssembler()
    for event in fake_responses.stream_events(response, OK):
        assembler.feed(event)
    assert assembler.done and assembler.answer() == response


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=40),
       st.sampled_from([OK, TOOL_CALLS]))
def test_stream_assembly_at_any_chunk_boundary(cuts: list[int], behaviour: Behaviour) -> None:
    response = answer(behaviour)
    data = b"".join(fake_responses.stream_events(response, behaviour)).replace(b"\n", b"\r\n")
    assembler, position = ResponsesStreamAssembler(), 0
    for cut in cuts:
        assembler.feed(data[position : position + cut])
        position += cut
    assembler.feed(data[position:])
    assert assembler.answer() == response


@pytest.mark.parametrize("kind", ["length", "content_filter", fake_responses.FAILED, fake_responses.STREAM_ERROR])
def test_failed_incomplete_and_error_streams_are_not_stored(kind: str) -> None:
    assembler = ResponsesStreamAssembler()
    for event in fake_responses.stream_events(answer(Behaviour(kind)), Behaviour(kind)):
        assembler.feed(event)
    assert assembler.done and assembler.answer() is None


def test_a_cut_stream_or_an_unreadable_event_is_not_stored() -> None:
    events = fake_responses.stream_events(answer(), OK)
    assembler = ResponsesStreamAssembler()
    for event in events[:-1]:
        assembler.feed(event)
    assert not assembler.done and assembler.answer() is None
    assembler = ResponsesStreamAssembler()
    for event in [*events[:3], b"event: response.output_text.delta\ndata: {not json\n\n", *events[3:]]:
        assembler.feed(event)
    assert assembler.answer() is None


def test_a_completed_event_without_output_is_filled_from_the_finished_items() -> None:
    response = answer()
    events = fake_responses.stream_events(response, OK)
    completed = {"type": "response.completed", "sequence_number": 99, "response": {**response, "output": []}}
    assembler = ResponsesStreamAssembler()
    for event in [*events[:-1], b"event: response.completed\ndata: " + orjson.dumps(completed) + b"\n\n"]:
        assembler.feed(event)
    assert assembler.answer() == response


@pytest.mark.parametrize("behaviour", [OK, TOOL_CALLS], ids=["message", "function-call"])
def test_replay_is_what_the_provider_sends(behaviour: Behaviour) -> None:
    response = answer(behaviour)
    response["output"].insert(0, {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAA",
                                  "summary": [{"type": "summary_text", "text": "Thinking it over."}]})
    data = b"".join(RESPONSES.replay(response, parse(PLAIN)))
    events = _events(data)
    types = [e for e, _ in events]
    assert [d["type"] for _, d in events] == types  # the event: line names the data's type
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert {d["response"]["id"] for e, d in events if "response" in d} == {response["id"]}
    assert events[0][1]["response"]["status"] == "in_progress" and events[0][1]["response"]["output"] == []
    assert events[-1][1]["response"] == response
    added = [d["item"]["id"] for e, d in events if e == "response.output_item.added"]
    done = [d["item"] for e, d in events if e == "response.output_item.done"]
    assert added == [i["id"] for i in response["output"]] and done == response["output"]
    item = response["output"][1]
    if behaviour is OK:
        text = item["content"][0]["text"]
        assert "".join(d["delta"] for e, d in events if e == "response.output_text.delta") == text
        assert types[types.index("response.output_item.added", 4):][:3] == [
            "response.output_item.added", "response.content_part.added", "response.output_text.delta"]
        for name in ("response.output_text.done", "response.content_part.done"):
            assert name in types
    else:
        arguments = "".join(d["delta"] for e, d in events if e == "response.function_call_arguments.delta")
        assert arguments == item["arguments"] == fake_responses.TOOL_ARGUMENTS
        (final,) = [d for e, d in events if e == "response.function_call_arguments.done"]
        assert final["arguments"] == item["arguments"] and final["name"] == "get_weather"
    summary = "".join(d["delta"] for e, d in events if e == "response.reasoning_summary_text.delta")
    assert summary == "Thinking it over."
    # and what is replayed assembles back into the same answer
    assembler = ResponsesStreamAssembler()
    assembler.feed(data)
    assert assembler.answer() == response


def test_a_long_answer_replays_in_chunks() -> None:
    response = answer()
    response["output"][0]["content"][0]["text"] = "word " * 100
    deltas = [d["delta"] for e, d in _events(b"".join(replay_events(response))) if e == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == "word " * 100


def test_a_fresh_answer_has_new_ids_the_requests_model_and_its_own_tags() -> None:
    cached = answer(body={**PLAIN, "metadata": {"run": "1"}, "user": "first", "prompt_cache_key": "k1"})
    request = parse({**PLAIN, "model": "gpt-4.1-mini", "metadata": {"run": "2"}, "prompt_cache_key": "k2"})
    before = int(time.time())
    fresh = RESPONSES.as_fresh_answer(cached, request)
    assert fresh["id"].startswith("resp_") and fresh["id"] != cached["id"]
    assert fresh["output"][0]["id"].startswith("msg_") and fresh["output"][0]["id"] != cached["output"][0]["id"]
    assert fresh["model"] == "gpt-4.1-mini" and fresh["created_at"] >= before
    assert (fresh["metadata"], fresh["user"], fresh["prompt_cache_key"]) == ({"run": "2"}, None, "k2")
    assert fresh["output"][0]["content"] == cached["output"][0]["content"]
    assert cached["id"] == "resp_fake_1"  # the cached answer itself is untouched


def test_prose_is_a_text_slot_and_everything_else_is_raw() -> None:
    plain = parse(PLAIN)
    response = answer()
    slots = list(RESPONSES.text_slots(response))
    assert [text for text, _ in slots] == [response["output"][0]["content"][0]["text"]]
    slots[0][1]("replaced")
    assert response["output"][0]["content"][0]["text"] == "replaced"
    assert RESPONSES.raw_reason(answer(), plain) is None
    assert RESPONSES.raw_reason(answer(), parse({**PLAIN, "text": {"format": TITLE_FORMAT}})) is HitReason.JSON_OUTPUT
    assert RESPONSES.raw_reason(answer(), parse({**PLAIN, "text": {"format": {"type": "json_object"}}})) \
        is HitReason.JSON_OUTPUT
    assert RESPONSES.raw_reason(answer(), parse({**PLAIN, "include": ["message.output_text.logprobs"]})) \
        is HitReason.LOGPROBS
    cited = answer()
    cited["output"][0]["content"][0]["annotations"] = [{"type": "url_citation", "start_index": 0, "end_index": 3,
                                                        "url": "https://example.com", "title": "x"}]
    assert RESPONSES.raw_reason(cited, plain) is HitReason.NOT_TEXT
    refusal = answer()
    refusal["output"][0]["content"] = [{"type": "refusal", "refusal": "No."}]
    assert RESPONSES.raw_reason(refusal, plain) is HitReason.NOT_TEXT


def test_usage_is_input_plus_output_tokens() -> None:
    response = answer()
    assert RESPONSES.usage_tokens(response) == fake_responses.INPUT_TOKENS + response["usage"]["output_tokens"]
    assert RESPONSES.usage_tokens({**response, "usage": None}) == 0
    assert RESPONSES.usage_tokens({**response, "usage": {"input_tokens": True, "output_tokens": -1}}) == 0


def test_the_mock_answer_is_complete_and_replays() -> None:
    request = parse({**PLAIN, "stream": True})
    mock = RESPONSES.mock_answer(request, "[mock] hello", "abc")
    assert RESPONSES.is_complete(mock) and not RESPONSES.calls_tools(mock)
    assembler = ResponsesStreamAssembler()
    for event in RESPONSES.replay(mock, request):
        assembler.feed(event)
    assert assembler.answer() == mock
    assert RESPONSES.mock_answer(request, "[mock] hello", "abc")["output"] == mock["output"]  # deterministic
