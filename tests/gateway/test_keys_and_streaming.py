"""Pure logic: tenant ids, canonical requests, context hashes and eligibility, and SSE
assembly/replay (including chunks split at arbitrary byte boundaries)."""

from __future__ import annotations

import copy
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.keys import ANONYMOUS_TENANT, RequestKeys, api_key_from_headers, l1_key, tenant_id
from services.gateway.protocols.base import ParsedRequest
from services.gateway.protocols.openai_chat import (
    ChatCompletions,
    StreamAssembler,
    canonical_request,
    is_cacheable,
    replay_events,
    semantic_question,
)
from services.gateway.protocols.question import AskedPart, asked_part

CHAT = ChatCompletions()


def parse(request: dict[str, Any]) -> ParsedRequest:
    return CHAT.parse(orjson.dumps(request))


def context_hash(request: dict[str, Any]) -> str | None:
    return RequestKeys.of("t", parse(request)).context_hash

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
    # any credential names a tenant, whatever its scheme: only a request with none is anonymous
    assert api_key_from_headers({"Authorization": "Basic abc"}) == "Basic abc"
    assert api_key_from_headers({"Authorization": "Bearer\tsk-3"}) == "sk-3"
    assert api_key_from_headers({}) is None
    assert tenant_id(None) == ANONYMOUS_TENANT
    assert tenant_id("sk-1") != tenant_id("sk-2")
    assert "sk-1" not in tenant_id("sk-1") and len(tenant_id("sk-1")) == 64


def test_canonical_request_ignores_non_semantic_fields_and_key_order() -> None:
    noisy = {"stream": True, "stream_options": {"include_usage": True}, "user": "u", "metadata": {"a": 1}, "store": True}
    reordered = dict(reversed(list(BASE.items())))
    assert canonical_request({**BASE, **noisy}) == canonical_request(reordered)
    assert canonical_request({**BASE, "temperature": 1}) != canonical_request(BASE)
    assert l1_key("t1", CHAT.name, canonical_request(BASE)) != l1_key("t2", CHAT.name, canonical_request(BASE))
    assert l1_key("t1", CHAT.name, canonical_request(BASE)) != l1_key("t1", "other.protocol", canonical_request(BASE))


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


def test_a_last_message_with_an_image_is_exact_only() -> None:
    # The answer depends on the picture, which the semantic tiers cannot compare.
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    a = with_last([{"type": "text", "text": "What is this?"}, image])
    assert semantic_question(a) is None and context_hash(a) is None


def test_trailing_instructions_belong_to_the_context_not_the_question() -> None:
    # Aider sends the question, then a long system message with its edit-format rules.
    rules = {"role": "system", "content": "Use SEARCH/REPLACE blocks for every edit."}
    a = {**BASE, "messages": [*BASE["messages"], rules]}
    b = {**BASE, "messages": [BASE["messages"][0], {"role": "user", "content": "Centre a div?"}, rules]}
    other_rules = {**BASE, "messages": [*BASE["messages"], {"role": "system", "content": "Use unified diffs."}]}
    assert semantic_question(a) == "How do I center a div?"
    assert context_hash(a) == context_hash(b) != context_hash(other_rules)
    assert context_hash(a) != context_hash(BASE)


def test_eligibility_for_the_semantic_tiers() -> None:
    assert semantic_question(BASE) == "How do I center a div?"
    assert semantic_question(with_last([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])) == "a\nb"
    tool_result = with_last("42 files changed", role="tool", tool_call_id="call_1")
    prefill = with_last("Sure, here", role="assistant")
    for request in (tool_result, prefill, with_last(""), with_last("  \n\t"), with_last(None),
                    with_last([{"type": "image_url", "image_url": {"url": "x"}}])):
        assert semantic_question(request) is None
        keys = RequestKeys.of("t", parse(request))
        assert keys.question is None and keys.context_hash is None
        assert keys.l1_key  # still served by L1


# ------------------------------------------------------------------------------ the asked part

# Aider's shape for a model it does not know: the edit-format rules that close its system
# prompt are appended to the user's words too (shortened here; tests/agents/test_aider.py
# runs the real client).
AIDER_RULES = (
    "# *SEARCH/REPLACE block* Rules:\n\n"
    "Every *SEARCH/REPLACE block* must use this format:\n1. The *FULL* file path alone on a line.\n"
    "2. The opening fence and code language, eg: ```python\n3. The start of search block: <<<<<<< SEARCH\n\n"
    "ONLY EVER RETURN CODE IN A *SEARCH/REPLACE BLOCK*!\n\n\n"
)
AIDER_SYSTEM = "Act as an expert software developer.\nTake requests for changes to the supplied code.\n\n" + AIDER_RULES


def aider_unknown_model(question: str, rules: str = AIDER_RULES, system: str = AIDER_SYSTEM) -> dict[str, Any]:
    return {"model": "my-local-model", "temperature": 0, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": "hello.py\n```\ndef greet(name):\n    return 'Hello ' + name\n```"},
        {"role": "assistant", "content": "Ok, any changes I propose will be to those files."},
        {"role": "user", "content": question + "\n\n" + rules},
    ]}


def rebuilt(part: AskedPart) -> str:
    """The message text from its two halves: surroundings carry the prefix's length first."""
    if not part.surroundings:
        return part.question
    length, _, rest = part.surroundings.partition(":")
    return rest[: int(length)] + part.question + rest[int(length):]


def test_rules_appended_to_the_user_message_are_context_not_question() -> None:
    a = aider_unknown_model("Rename greet to welcome")
    b = aider_unknown_model("Rename the greet function to welcome")
    assert semantic_question(a) == "Rename greet to welcome"
    assert semantic_question(b) == "Rename the greet function to welcome"
    assert context_hash(a) == context_hash(b)
    # one byte of the appended rules differs: another scope, never a hit across it
    changed = aider_unknown_model("Rename greet to welcome", rules=AIDER_RULES.replace("FULL", "full"),
                                  system=AIDER_SYSTEM.replace("FULL", "full"))
    assert semantic_question(changed) == "Rename greet to welcome"
    assert context_hash(changed) != context_hash(a)
    # the same words without the rules appended are another request, too
    plain = aider_unknown_model("Rename greet to welcome")
    plain["messages"][-1]["content"] = "Rename greet to welcome"
    assert semantic_question(plain) == "Rename greet to welcome" and context_hash(plain) != context_hash(a)


def test_only_text_the_request_repeats_is_stripped() -> None:
    # rules the system prompt does not hold (or holds only in part) stay in the question
    own = aider_unknown_model("Rename greet to welcome", system="Act as an expert software developer.")
    assert semantic_question(own) == own["messages"][-1]["content"]
    half = aider_unknown_model("Rename greet to welcome", system=AIDER_SYSTEM[: len(AIDER_SYSTEM) - 20])
    assert semantic_question(half) == half["messages"][-1]["content"]
    # a leading block repeated from the system prompt goes too; the middle is the question
    lead = "Act as an expert software developer.\nTake requests for changes to the supplied code."
    assert asked_part(lead + "\n\nRename greet\n\n" + AIDER_RULES, [AIDER_SYSTEM]).question == "Rename greet"
    # the whole turn sent again: nothing is left to ask but all of it
    assert asked_part("Rename greet\n\nto welcome", ["Rename greet\n\nto welcome"]).question == (
        "Rename greet\n\nto welcome")
    # text only (no other texts to compare with): the whole message
    assert asked_part("Rename greet\n\n" + AIDER_RULES) == AskedPart("Rename greet\n\n" + AIDER_RULES, "")


def test_a_long_question_that_is_not_wrapped_stays_whole() -> None:
    question = (
        "This function should return a greeting, but the tests fail:\n\n"
        "```python\ndef greet(name):\n    return 'Hello ' + name\n```\n\n"
        "The traceback says TypeError: can only concatenate str (not \"int\") to str.\n\n"
        "Why, and how do I fix it?"
    )
    request = {"model": "gpt-x", "messages": [
        {"role": "system", "content": "You are a Python expert.\n\nWhy, and how"},  # shares words, no block
        {"role": "user", "content": question},
    ]}
    assert semantic_question(request) == question


_PARAGRAPHS = st.lists(st.text(alphabet="ab \n:", max_size=6), max_size=6).map("\n\n".join)


@settings(max_examples=300, deadline=None)
@given(_PARAGRAPHS, st.lists(_PARAGRAPHS, max_size=3))
def test_the_asked_part_and_its_surroundings_are_the_whole_text(text: str, elsewhere: list[str]) -> None:
    # What is not the question is in the surroundings, verbatim and in place: two messages with
    # the same surroundings differ in their question alone, so no boilerplate difference can
    # hide from the context hash.
    part = asked_part(text, elsewhere)
    assert rebuilt(part) == text
    assert part.question.strip() or part.question == text


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


def test_empty_answers_are_not_cacheable() -> None:
    def one(choice: dict[str, Any]) -> dict[str, Any]:
        return {"id": "c", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop", **choice}]}

    assert is_cacheable(one({"message": {"role": "assistant", "content": "Paris."}}))
    assert not is_cacheable(one({"message": {"role": "assistant", "content": ""}}))
    assert not is_cacheable(one({"message": {"role": "assistant", "content": "  \n"}}))
    assert not is_cacheable(one({"message": {"role": "assistant", "content": None}}))
    assert not is_cacheable(one({}))  # a choice without a message
    calls = {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    assert is_cacheable({"id": "c", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": calls}]})


# ------------------------------------------------------------------------------ canonical form (property)

# What changes from run to run and not the answer: never in the exact key.
_PER_RUN = {
    "user": st.text(max_size=12),
    "metadata": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    "store": st.booleans(),
    "stream": st.booleans(),
    "stream_options": st.just({"include_usage": True}),
}
# What the model sees: each one changes the key.
_SEEN = {
    "model": st.sampled_from(["gpt-x2", "gpt-y"]),
    "temperature": st.floats(min_value=0.1, max_value=2, allow_nan=False),
    "tools": st.just([{"type": "function", "function": {"name": "f"}}]),
    "response_format": st.just({"type": "json_object"}),
    "max_tokens": st.integers(min_value=1, max_value=99),
}


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_per_run_fields_never_change_the_key_and_seen_fields_always_do(data: st.DataObject) -> None:
    base = canonical_request(BASE)
    noise = {k: data.draw(v, label=k) for k, v in _PER_RUN.items() if data.draw(st.booleans(), label=f"use {k}")}
    # cache_control markers move between turns: wherever they sit, the key stays
    marked = copy.deepcopy(BASE)
    marked["messages"][0]["cache_control"] = {"type": "ephemeral"}
    assert canonical_request({**BASE, **noise}) == base
    assert canonical_request({**marked, **noise}) == base
    field = data.draw(st.sampled_from(sorted(_SEEN)), label="seen field")
    changed = {**BASE, field: data.draw(_SEEN[field], label=field)}
    assert canonical_request(changed) != base
