"""Pure logic: tenant ids, canonical requests, context hashes and eligibility, and SSE
assembly/replay (including chunks split at arbitrary byte boundaries)."""

from __future__ import annotations

import copy
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.keys import (
    ANONYMOUS_TENANT,
    RequestKeys,
    api_key_from_headers,
    canonical_request,
    context_hash,
    l1_key,
    semantic_question,
    tenant_id,
)
from services.gateway.streaming import StreamAssembler, is_cacheable, replay_events

BASE: dict[str, Any] = {
    "model": "gpt-x",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "How do I center a div?"},
    ],
    "temperature": 0,
}


def with_last(content: Any, role: str = "user", **extra: Any) -> dict[str, Any]:
    request = copy.deepcopy(BASE)
    request["messages"][-1] = {"role": role, "content": content, **extra}
    return request


# ------------------------------------------------------------------------------ keys


def test_tenant_from_bearer_or_x_api_key_and_never_the_key() -> None:
    assert api_key_from_headers({"Authorization": "Bearer sk-1"}) == "sk-1"
    assert api_key_from_headers({"x-api-key": "sk-2"}) == "sk-2"
    assert api_key_from_headers({"Authorization": "Basic abc"}) is None
    assert api_key_from_headers({}) is None
    assert tenant_id(None) == ANONYMOUS_TENANT
    assert tenant_id("sk-1") != tenant_id("sk-2")
    assert "sk-1" not in tenant_id("sk-1") and len(tenant_id("sk-1")) == 64


def test_canonical_request_ignores_non_semantic_fields_and_key_order() -> None:
    noisy = {"stream": True, "stream_options": {"include_usage": True}, "user": "u", "metadata": {"a": 1}, "store": True}
    reordered = dict(reversed(list(BASE.items())))
    assert canonical_request({**BASE, **noisy}) == canonical_request(reordered)
    assert canonical_request({**BASE, "temperature": 1}) != canonical_request(BASE)
    assert l1_key("t1", canonical_request(BASE)) != l1_key("t2", canonical_request(BASE))


def test_context_hash_ignores_only_the_last_user_text() -> None:
    reworded = with_last("What's the CSS to center a div?")
    assert context_hash(BASE) == context_hash(reworded)
    assert context_hash(BASE) == context_hash({**BASE, "stream": True, "user": "x"})
    changed_everything_else = [
        {**BASE, "model": "other"},
        {**BASE, "temperature": 0.7},
        {**BASE, "tools": [{"type": "function", "function": {"name": "f"}}]},
        {**BASE, "tool_choice": "none"},
        {**BASE, "response_format": {"type": "json_object"}},
        {**BASE, "messages": [{"role": "system", "content": "You are verbose."}, BASE["messages"][1]]},
        {**BASE, "messages": [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "ok"}, BASE["messages"][1]]},
    ]
    hashes = {context_hash(r) for r in changed_everything_else}
    assert context_hash(BASE) not in hashes and len(hashes) == len(changed_everything_else)


def test_context_hash_keeps_non_text_parts_of_the_last_message() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    other_image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,BBBB"}}
    a = with_last([{"type": "text", "text": "What is this?"}, image])
    b = with_last([{"type": "text", "text": "What's in the picture?"}, image])
    c = with_last([{"type": "text", "text": "What is this?"}, other_image])
    assert context_hash(a) == context_hash(b) != context_hash(c)


def test_eligibility_for_the_semantic_tiers() -> None:
    assert semantic_question(BASE) == "How do I center a div?"
    assert semantic_question(with_last([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])) == "a\nb"
    tool_result = with_last("42 files changed", role="tool", tool_call_id="call_1")
    prefill = with_last("Sure, here", role="assistant")
    for request in (tool_result, prefill, with_last(""), with_last("  \n\t"), with_last(None),
                    with_last([{"type": "image_url", "image_url": {"url": "x"}}])):
        assert semantic_question(request) is None
        keys = RequestKeys.of("t", request)
        assert keys.question is None and keys.context_hash is None
        assert keys.l1_key  # still served by L1


# ------------------------------------------------------------------------------ SSE

COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-x",
    "system_fingerprint": "fp_1",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Use flexbox: display:flex; " * 5}, "finish_reason": "stop", "logprobs": None},
        {
            "index": 1,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "div"}'}},
                    {"id": "call_b", "type": "function", "function": {"name": "other", "arguments": "{}"}},
                ],
            },
            "finish_reason": "tool_calls",
            "logprobs": None,
        },
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 30, "total_tokens": 39},
}


def assemble(data: bytes, cuts: list[int] | None = None) -> dict[str, Any] | None:
    assembler = StreamAssembler()
    positions = sorted({0, len(data), *(cuts or [])})
    for start, end in zip(positions, positions[1:]):
        assembler.feed(data[start:end])
    return assembler.completion()


def test_replay_then_assemble_is_the_identity() -> None:
    data = b"".join(replay_events(COMPLETION, include_usage=True))
    assert assemble(data) == COMPLETION
    without_usage = b"".join(replay_events(COMPLETION, include_usage=False))
    assert b'"usage"' not in without_usage
    assert assemble(without_usage) == {k: v for k, v in COMPLETION.items() if k != "usage"}


def test_replay_has_one_id_role_first_finish_then_done() -> None:
    events = list(replay_events(COMPLETION, include_usage=True))
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert {c["id"] for c in chunks} == {"chatcmpl-1"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == COMPLETION["usage"]
    finals = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [(f["index"], f["finish_reason"]) for f in finals] == [(0, "stop"), (1, "tool_calls")]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=4000), max_size=30))
def test_assembly_does_not_depend_on_how_bytes_are_split(cuts: list[int]) -> None:
    data = b"".join(replay_events(COMPLETION, include_usage=True)).replace(b"\n\n", b"\r\n\r\n")
    assert assemble(data, cuts) == COMPLETION


def test_incomplete_or_unsafe_streams_are_not_cacheable() -> None:
    data = b"".join(replay_events(COMPLETION, include_usage=True))
    assert assemble(data.replace(b"data: [DONE]\n\n", b"")) is None  # interrupted
    assert assemble(data.replace(b'"finish_reason":"stop"', b'"finish_reason":"length"')) is None
    assert assemble(data.replace(b'"finish_reason":"stop"', b'"finish_reason":"content_filter"')) is None
    assert assemble(b'data: {"error": {"message": "boom"}}\n\ndata: [DONE]\n\n') is None
    assert assemble(data.replace(b"data: {", b"data: {{", 1)) is None  # unreadable chunk
    assert is_cacheable(COMPLETION)
    assert not is_cacheable({**COMPLETION, "choices": []})
