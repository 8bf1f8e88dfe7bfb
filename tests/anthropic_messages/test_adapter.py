"""The Messages adapter's pure logic: validation, the exact key, the question and the context
(Claude Code's shapes, the title call), what is stored, SSE assembly and replay."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reflex.settings import ResponseFormat
from services.gateway import hit_format
from services.gateway.errors import ErrorKind, GatewayError
from services.gateway.keys import RequestKeys
from services.gateway.protocols.anthropic_messages import AnthropicMessages, StreamAssembler, replay_events
from services.gateway.protocols.base import HitReason, ParsedRequest
from services.gateway.protocols.openai_chat import ChatCompletions
from tests.anthropic_messages import shapes
from tests.support import fake_anthropic
from tests.support.fake_upstream import Behaviour

MESSAGES = AnthropicMessages()
PROMPT = "How do I center a div in CSS?"
REWORDED = "How can I center a div using CSS?"
PLAIN: dict[str, Any] = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": PROMPT}]}


def parse(request: dict[str, Any], headers: dict[str, str] | None = None) -> ParsedRequest:
    return MESSAGES.with_headers(MESSAGES.parse(orjson.dumps(request)), headers or {})


def keys(request: dict[str, Any], headers: dict[str, str] | None = None) -> RequestKeys:
    return RequestKeys.of("tenant", parse(request, headers))


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("body", "kind", "param"),
    [
        (b"", ErrorKind.INVALID_JSON, None),
        (b"{not json", ErrorKind.INVALID_JSON, None),
        (b"[1, 2]", ErrorKind.INVALID_JSON, None),
        (b'{"max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}', ErrorKind.MISSING_FIELD, "model"),
        (b'{"model": 7, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}', ErrorKind.WRONG_TYPE,
         "model"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', ErrorKind.MISSING_FIELD, "max_tokens"),
        (b'{"model": "m", "max_tokens": "10", "messages": [{"role": "user", "content": "hi"}]}',
         ErrorKind.WRONG_TYPE, "max_tokens"),
        (b'{"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}',
         ErrorKind.WRONG_TYPE, "max_tokens"),
        (b'{"model": "m", "max_tokens": true, "messages": [{"role": "user", "content": "hi"}]}',
         ErrorKind.WRONG_TYPE, "max_tokens"),
        (b'{"model": "m", "max_tokens": 1}', ErrorKind.MISSING_FIELD, "messages"),
        (b'{"model": "m", "max_tokens": 1, "messages": {}}', ErrorKind.WRONG_TYPE, "messages"),
        (b'{"model": "m", "max_tokens": 1, "messages": []}', ErrorKind.WRONG_TYPE, "messages"),
        (b'{"model": "m", "max_tokens": 1, "messages": ["hi"]}', ErrorKind.WRONG_TYPE, "messages[0]"),
        (b'{"model": "m", "max_tokens": 1, "messages": [{"content": "hi"}]}', ErrorKind.MISSING_FIELD,
         "messages[0].role"),
        (b'{"model": "m", "max_tokens": 1, "messages": [{"role": "tool", "content": "hi"}]}',
         ErrorKind.INVALID_REQUEST, "messages[0].role"),
        (b'{"model": "m", "max_tokens": 1, "messages": [{"role": "user"}]}', ErrorKind.MISSING_FIELD,
         "messages[0].content"),
        (b'{"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": 5}]}', ErrorKind.WRONG_TYPE,
         "messages[0].content"),
        (b'{"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"text": "x"}]}]}',
         ErrorKind.WRONG_TYPE, "messages[0].content[0]"),
        (b'{"model": "m", "max_tokens": 1, "system": 5, "messages": [{"role": "user", "content": "hi"}]}',
         ErrorKind.WRONG_TYPE, "system"),
        ((b'{"model": "m", "max_tokens": 1, "system": [{"type": "image"}], "messages": [{"role": "user", '
          b'"content": "hi"}]}'), ErrorKind.WRONG_TYPE, "system[0]"),
        (b'{"model": "m", "max_tokens": 1, "stream": "yes", "messages": [{"role": "user", "content": "hi"}]}',
         ErrorKind.WRONG_TYPE, "stream"),
        (b'{"model": "m", "max_tokens": 1, "tools": {}, "messages": [{"role": "user", "content": "hi"}]}',
         ErrorKind.WRONG_TYPE, "tools"),
    ],
)
def test_bad_requests_name_what_is_wrong(body: bytes, kind: ErrorKind, param: str | None) -> None:
    with pytest.raises(GatewayError) as caught:
        MESSAGES.parse(body)
    assert caught.value.kind is kind
    assert caught.value.param == param
    if param is not None:
        assert f"'{param}" in caught.value.message  # the parameter is named in the message itself


def test_claude_code_shapes_parse() -> None:
    for body in (shapes.main_call(PROMPT), shapes.title_call(PROMPT), PLAIN):
        parsed = parse(body)
        assert parsed.protocol == "anthropic.messages" and parsed.model == body["model"]
        assert parsed.stream is (body.get("stream") is True)


# ------------------------------------------------------------------------------ the exact key


def test_two_runs_of_one_prompt_share_one_key() -> None:
    # measured: run 1 and run 3 differ only in metadata.user_id's session id
    assert keys(shapes.main_call(PROMPT, session="a")).l1_key == keys(shapes.main_call(PROMPT, session="b")).l1_key
    assert keys(shapes.main_call(PROMPT, stream=True)).l1_key == keys(shapes.main_call(PROMPT, stream=False)).l1_key


def test_cache_control_markers_never_split_the_key_wherever_they_sit() -> None:
    moved = shapes.main_call(PROMPT)
    for block in moved["system"]:
        block.pop("cache_control", None)
    moved["system"][0]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    moved["messages"][0]["content"][1].pop("cache_control")
    moved["messages"][0]["content"][0]["cache_control"] = shapes.EPHEMERAL
    moved["messages"][1]["cache_control"] = shapes.EPHEMERAL
    moved["tools"][-1]["cache_control"] = shapes.EPHEMERAL
    moved["cache_control"] = shapes.EPHEMERAL  # top-level (automatic caching)
    assert keys(moved).l1_key == keys(shapes.main_call(PROMPT)).l1_key


def test_the_string_shorthand_is_the_text_block_it_stands_for() -> None:
    blocks = {**PLAIN, "system": [{"type": "text", "text": "Be brief."}],
              "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]}
    assert keys({**PLAIN, "system": "Be brief."}).l1_key == keys(blocks).l1_key
    assert keys({**PLAIN, "system": "Be brief."}).context_hash == keys(blocks).context_hash
    assert keys({**PLAIN, "system": "Be brief!"}).l1_key != keys(blocks).l1_key


def test_a_key_named_cache_control_inside_content_is_content() -> None:
    # only the API's marker positions are stripped: a tool's schema or a tool call's input may
    # use the name for their own data, and that changes the answer
    schema = shapes.main_call(PROMPT)
    schema["tools"][0]["input_schema"]["properties"]["cache_control"] = {"type": "string"}
    assert keys(schema).l1_key != keys(shapes.main_call(PROMPT)).l1_key
    history = copy.deepcopy(PLAIN)
    history["messages"] = [
        {"role": "user", "content": "Set it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "set",
                                           "input": {"cache_control": "off"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "done", "cache_control": shapes.EPHEMERAL}]}]},
    ]
    other = copy.deepcopy(history)
    other["messages"][1]["content"][0]["input"]["cache_control"] = "on"
    assert keys(history).l1_key != keys(other).l1_key
    unmarked = copy.deepcopy(history)
    del unmarked["messages"][2]["content"][0]["content"][0]["cache_control"]  # a marker: stripped
    assert keys(history).l1_key == keys(unmarked).l1_key


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b.update(model="claude-other"),
        lambda b: b.update(max_tokens=1000),
        lambda b: b.update(thinking={"type": "disabled"}),
        lambda b: b.update(output_config={"effort": "low"}),
        lambda b: b.update(context_management=None),
        lambda b: b.update(temperature=0.5),
        lambda b: b["tools"].pop(),
        lambda b: b["system"][2].update(text="gitStatus: M app.py"),
        lambda b: b["system"][0].update(text=shapes.billing_header(PROMPT, "2.1.198")),
        lambda b: b["messages"][0]["content"][0].update(text=shapes.REMINDER.replace("2026-12-01", "2026-12-02")),
        lambda b: b["messages"][1].update(content="Other agents"),
        lambda b: b["messages"][0]["content"][1].update(text=REWORDED),
    ],
)
def test_what_the_model_sees_stays_in_the_key(change: Any) -> None:
    changed = shapes.main_call(PROMPT)
    change(changed)
    assert keys(changed).l1_key != keys(shapes.main_call(PROMPT)).l1_key


def test_api_version_and_betas_are_in_the_key_and_the_context_as_a_set() -> None:
    base = {"anthropic-version": "2023-06-01", "anthropic-beta": "a-1,b-2"}
    assert keys(PLAIN, base).l1_key == keys(PLAIN, {**base, "anthropic-beta": " b-2, a-1"}).l1_key
    for other in ({**base, "anthropic-beta": "a-1"}, {**base, "anthropic-version": "2024-01-01"}):
        assert keys(PLAIN, base).l1_key != keys(PLAIN, other).l1_key
        assert keys(PLAIN, base).context_hash != keys(PLAIN, other).context_hash


def test_the_protocol_is_in_the_key_and_the_context() -> None:
    chat_request = {"model": "claude-x", "messages": [{"role": "user", "content": PROMPT}]}
    chat = RequestKeys.of("tenant", ChatCompletions().parse(orjson.dumps(chat_request)))
    assert chat.l1_key != keys(PLAIN).l1_key and chat.context_hash != keys(PLAIN).context_hash
    assert parse(PLAIN).context.startswith(b"anthropic.messages\n")


# ------------------------------------------------------------------------------ the question


def test_claude_codes_question_is_the_prompt_without_the_reminder() -> None:
    assert parse(shapes.main_call(PROMPT)).question == PROMPT
    assert parse(PLAIN).question == PROMPT
    two_blocks = copy.deepcopy(PLAIN)
    two_blocks["messages"][0]["content"] = [{"type": "text", "text": "First part."},
                                            {"type": "text", "text": "Second part?"}]
    assert parse(two_blocks).question == "First part.\nSecond part?"


@pytest.mark.parametrize(
    "last",
    [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}]},
        {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": "iVBORw0KGgo="}},
                                     {"type": "text", "text": "What is this?"}]},
        {"role": "user", "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                                     "data": "x"}},
                                     {"type": "text", "text": "Summarise it"}]},
        {"role": "user", "content": [{"type": "text", "text": shapes.REMINDER}]},  # nothing asked
        {"role": "user", "content": "   "},
        {"role": "assistant", "content": "The answer starts with"},  # a prefill
    ],
)
def test_exact_tier_only(last: dict[str, Any]) -> None:
    request = copy.deepcopy(PLAIN)
    request["messages"] = [{"role": "user", "content": "Earlier"}, {"role": "assistant", "content": "Yes"}, last]
    parsed = parse(request)
    assert parsed.question is None and parsed.context == b""
    assert keys(request).scope is None


def test_a_system_message_after_an_assistant_message_is_not_a_question() -> None:
    request = {**PLAIN, "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi"},
                                     {"role": "system", "content": "Be brief."}]}
    assert parse(request).question is None


# ------------------------------------------------------------------------------ the context


def test_a_rewording_keeps_the_context_and_the_billing_suffix_does_not_split_it() -> None:
    first, reworded = shapes.main_call(PROMPT), shapes.main_call(REWORDED, session="other")
    assert first["system"][0]["text"] != reworded["system"][0]["text"]  # the prompt-derived suffix
    assert keys(first).l1_key != keys(reworded).l1_key
    assert keys(first).context_hash == keys(reworded).context_hash
    assert parse(reworded).question == REWORDED


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b["messages"][0]["content"][0].update(text=shapes.REMINDER.replace("2026-12-01", "2026-12-02")),
        lambda b: b["messages"][1].update(content="Other agents"),  # the trailing system message
        lambda b: b["system"][2].update(text="gitStatus: M app.py"),
        lambda b: b["system"][0].update(text=shapes.billing_header(PROMPT, "2.1.198")),  # the version stays
        lambda b: b["tools"].pop(),
        lambda b: b.update(model="claude-other"),
        lambda b: b.update(output_config={"effort": "high", "format": shapes.TITLE_FORMAT}),
        lambda b: b["messages"][0]["content"].reverse(),  # where the reminder sits
        lambda b: b["messages"].insert(0, {"role": "user", "content": "an earlier turn"}),
    ],
)
def test_everything_but_the_question_is_in_the_context(change: Any) -> None:
    changed = shapes.main_call(PROMPT)
    change(changed)
    assert keys(changed).context_hash is not None
    assert keys(changed).context_hash != keys(shapes.main_call(PROMPT)).context_hash


def test_a_title_call_never_shares_a_context_with_a_main_call() -> None:
    main, title = keys(shapes.main_call(PROMPT)), keys(shapes.title_call(PROMPT))
    assert title.question == shapes.title_text(PROMPT)
    assert main.context_hash != title.context_hash and main.l1_key != title.l1_key
    # the same main call asking for JSON output is its own context too (the schema is in it)
    as_json = shapes.main_call(PROMPT)
    as_json["output_config"] = {"effort": "high", "format": shapes.TITLE_FORMAT}
    assert keys(as_json).context_hash not in {main.context_hash, title.context_hash}
    # two title calls of reworded prompts do share one (and the verifier decides)
    assert keys(shapes.title_call(REWORDED, session="2")).context_hash == title.context_hash


# ------------------------------------------------------------------------------ answers


def answer(*content: dict[str, Any], stop_reason: str = "end_turn", **extra: Any) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": list(content),
            "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": 10, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 200,
                      "output_tokens": 7}, **extra}


TEXT = {"type": "text", "text": "Use flexbox on the parent: display: flex; justify-content: center."}
THINKING = {"type": "thinking", "thinking": "They want centring.", "signature": "EqQBCkYIBxgCKkD+sig=="}
REDACTED = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT"}
TOOL = {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "/tmp/a.css", "lines": [1, 2]}}
CITED = {"type": "text", "text": "It is 42.", "citations": [{"type": "char_location", "cited_text": "42",
                                                             "document_index": 0, "start_char_index": 0,
                                                             "end_char_index": 2}]}


@pytest.mark.parametrize(
    ("stop_reason", "complete"),
    [("end_turn", True), ("tool_use", True), ("stop_sequence", True), ("max_tokens", False), ("refusal", False),
     ("pause_turn", False), (None, False), ("something_new", False)],
)
def test_only_complete_answers_are_stored(stop_reason: str | None, complete: bool) -> None:
    assert MESSAGES.is_complete(answer(TEXT, stop_reason=stop_reason)) is complete  # type: ignore[arg-type]


def test_not_a_message_is_not_complete() -> None:
    assert not MESSAGES.is_complete({"type": "error", "error": {"type": "api_error", "message": "x"}})
    assert not MESSAGES.is_complete({**answer(TEXT), "content": "text"})


def test_tool_use_answers_call_tools() -> None:
    assert MESSAGES.calls_tools(answer(TEXT, TOOL, stop_reason="tool_use"))
    assert MESSAGES.calls_tools(answer({"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {}}))
    assert not MESSAGES.calls_tools(answer(THINKING, TEXT))


@pytest.mark.parametrize(
    "message",
    [
        answer(TEXT),
        answer(THINKING, TEXT),
        answer(REDACTED, THINKING, TEXT, TOOL, stop_reason="tool_use"),
        answer({**TOOL, "input": {}}, stop_reason="tool_use"),
        answer(CITED),
        answer({"type": "text", "text": "x" * 500 + " é 😀 " * 40}, stop_reason="stop_sequence"),
    ],
)
def test_replay_then_assemble_is_the_identity(message: dict[str, Any]) -> None:
    assembler = StreamAssembler()
    for event in replay_events(message):
        assembler.feed(event)
    assert assembler.done
    assert assembler.answer() == message  # thinking text and signature byte for byte


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=40))
def test_assembly_does_not_depend_on_how_bytes_are_split(cuts: list[int]) -> None:
    message = answer(THINKING, TEXT, TOOL, stop_reason="tool_use")
    data = b"".join(replay_events(message)).replace(b"\n", b"\r\n", 3)
    assembler = StreamAssembler()
    start = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        assembler.feed(data[start:cut])
        start = cut
    assert assembler.answer() == message


def test_the_fake_providers_own_streams_assemble_to_its_messages() -> None:
    # an independent writer of the wire format (tests/support/fake_anthropic.py): usage starts
    # in message_start and its output_tokens are updated by message_delta, as the API does
    body = {"model": "claude-x", "messages": [{"role": "user", "content": PROMPT}]}
    for kind in ("ok", fake_anthropic.THINKING, "tool_calls"):
        behaviour = Behaviour(kind)
        message = fake_anthropic.message(7, body, behaviour)
        assembler = StreamAssembler()
        for event in fake_anthropic.stream_events(message, behaviour):
            assembler.feed(event)
        assert assembler.answer() == message


def feed_all(events: list[bytes]) -> StreamAssembler:
    assembler = StreamAssembler()
    for event in events:
        assembler.feed(event)
    return assembler


def test_unsafe_streams_are_not_stored() -> None:
    good = list(replay_events(answer(TEXT, TOOL, stop_reason="tool_use")))
    assert feed_all(good).answer() is not None
    error = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "o"}}\n\n'
    cases = {
        "no message_stop": good[:-1],
        "an error event": good[:3] + [error] + good[3:],
        "an unknown event": good[:2] + [b'event: surprise\ndata: {"type": "surprise"}\n\n'] + good[2:],
        "an unknown delta": good[:2] + [(b'event: content_block_delta\ndata: {"type": "content_block_delta", '
                                         b'"index": 0, "delta": {"type": "new_delta", "x": 1}}\n\n')] + good[2:],
        "a data line that is not JSON": good[:2] + [b"event: ping\ndata: {oops\n\n"] + good[2:],
        "no message_start": good[1:],
        "two message_starts": good[:1] + good,
        "max_tokens": list(replay_events(answer(TEXT, stop_reason="max_tokens"))),
        "refusal": list(replay_events(answer(TEXT, stop_reason="refusal"))),
        "pause_turn": list(replay_events(answer(TEXT, stop_reason="pause_turn"))),
    }
    bad_json = answer({**TOOL, "input": {}}, stop_reason="tool_use")
    events = list(replay_events(bad_json))
    delta = orjson.loads(events[2].split(b"data: ", 1)[1])
    delta["delta"]["partial_json"] = '{"path": '
    events[2] = b"event: content_block_delta\ndata: " + orjson.dumps(delta) + b"\n\n"
    cases["tool input that is not JSON"] = events
    for name, stream in cases.items():
        assert feed_all(stream).answer() is None, name


def test_a_fresh_answer_has_a_new_id_and_the_requests_model() -> None:
    cached = answer(THINKING, TEXT)
    fresh = MESSAGES.as_fresh_answer(cached, parse({**PLAIN, "model": "claude-asked"}))
    assert fresh["id"].startswith("msg_") and fresh["id"] != cached["id"] and len(fresh["id"]) == 36
    assert fresh["model"] == "claude-asked" and cached["model"] == "claude-x"
    assert fresh["content"] == cached["content"] and fresh["usage"] == cached["usage"]


def test_usage_counts_every_billed_token() -> None:
    assert MESSAGES.usage_tokens(answer(TEXT)) == 10 + 3 + 200 + 7
    assert MESSAGES.usage_tokens({"usage": {"input_tokens": 4, "output_tokens": None}}) == 4
    assert MESSAGES.usage_tokens({}) == 0


def test_what_is_served_raw_whatever_was_asked() -> None:
    plain = parse(PLAIN)
    assert MESSAGES.raw_reason(answer(TEXT), plain) is None
    assert MESSAGES.raw_reason(answer(THINKING, TEXT), plain) is None
    assert MESSAGES.raw_reason(answer(TEXT, TOOL, stop_reason="tool_use"), plain) is HitReason.TOOL_CALLS
    assert MESSAGES.raw_reason(answer(CITED), plain) is HitReason.NOT_TEXT
    assert MESSAGES.raw_reason(answer(TEXT), parse(shapes.title_call(PROMPT))) is HitReason.JSON_OUTPUT


def test_hit_formats_touch_only_the_text_blocks() -> None:
    cached = answer(THINKING, TEXT)
    served, accounting = hit_format.present_hit(MESSAGES, cached, question=PROMPT, request=parse(PLAIN),
                                                requested=ResponseFormat.AUTO)
    assert served == cached and accounting.format is ResponseFormat.RAW  # prose: auto serves it raw
    assert accounting.tokens_saved == 220
    served, accounting = hit_format.present_hit(MESSAGES, cached, question=PROMPT, request=parse(PLAIN),
                                                requested=ResponseFormat.TAUQ)
    assert accounting.format is ResponseFormat.TAUQ
    assert served["content"][0] == THINKING and served["content"][1]["text"].startswith("semantic_request")
    assert cached["content"][1] == TEXT  # the cached entry itself is never changed


def test_the_mock_answer_is_deterministic_complete_and_replayable() -> None:
    request = parse(PLAIN)
    first = MESSAGES.mock_answer(request, "hello there", "abc")
    assert first == MESSAGES.mock_answer(request, "hello there", "abc")
    assert MESSAGES.is_complete(first) and not MESSAGES.calls_tools(first)
    assert feed_all(list(MESSAGES.replay(first, request))).answer() == first
