"""format_hit: which hits are served in Tauq, what the envelope holds, and the accounting."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from reflex import tokens
from reflex.settings import CacheSettings, ResponseFormat
from reflex.tauq import loads
from services.gateway.hit_format import (
    QUESTION_CUT_MARK,
    QUESTION_MAX_CHARS,
    REASON_AUTO_RAW,
    REASON_JSON_OUTPUT,
    REASON_LOGPROBS,
    REASON_NOT_TEXT,
    REASON_REQUESTED_RAW,
    REASON_TOOL_CALLS,
    REASON_TAUQ,
    format_hit,
)
from services.gateway.protocols.openai_chat import StreamAssembler, replay_events

from .conftest import strict_equal

TAUQ, RAW, AUTO = ResponseFormat.TAUQ, ResponseFormat.RAW, ResponseFormat.AUTO
QUESTION = "What's the capital of France?"
PROSE = 'The capital of France is **Paris**.\nIt has "about" 2.1 million people.'
RECORDS = [{"id": i, "name": f"user{i}", "active": i % 2 == 0, "score": i * 1.5} for i in range(20)]


def completion(*contents: str | None, usage: dict[str, Any] | None = None, **message_extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1764000000,
        "model": "gpt-4o",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": c, **message_extra}, "logprobs": None,
             "finish_reason": "stop"}
            for i, c in enumerate(contents)
        ],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def request(**extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a geography tutor with a very long system prompt."},
            {"role": "user", "content": QUESTION},
        ],
        **extra,
    }


USAGE = {"prompt_tokens": 51, "completion_tokens": 79, "total_tokens": 130}


def serve(cached: dict[str, Any], *, fmt: ResponseFormat = TAUQ, req: dict[str, Any] | None = None,
          question: str | None = QUESTION, stream: bool = False):
    before = copy.deepcopy(cached)
    served, accounting = format_hit(cached, question=question, request=req or request(), requested=fmt, stream=stream)
    assert cached == before, "format_hit must not change the cached completion"
    return served, accounting


# ---------------------------------------------------------------------------- tauq


@pytest.mark.parametrize("stream", [False, True])
def test_tauq_envelope_holds_the_matched_question_and_the_answer(stream: bool) -> None:
    cached = completion(PROSE, usage=USAGE)
    served, accounting = serve(cached, stream=stream)
    document = served["choices"][0]["message"]["content"]
    assert strict_equal(loads(document), {"semantic_request": QUESTION, "response": {"content": PROSE}})
    assert accounting.format is TAUQ and accounting.reason == REASON_TAUQ
    # only the content changed
    served["choices"][0]["message"]["content"] = PROSE
    assert served == cached


def test_the_envelope_never_carries_the_conversation() -> None:
    served, _ = serve(completion(PROSE, usage=USAGE))
    document = served["choices"][0]["message"]["content"]
    assert "system prompt" not in document and "system" not in loads(document)
    assert set(loads(document)) == {"semantic_request", "response"}


def test_json_answer_is_embedded_as_structure() -> None:
    raw = json.dumps({"users": RECORDS, "total": 20}, indent=2)
    served, accounting = serve(completion(raw, usage=USAGE))
    document = served["choices"][0]["message"]["content"]
    assert "!use User" in document  # uniform records as schema rows
    assert '\\"' not in document  # not a quoted JSON string
    assert strict_equal(loads(document)["response"]["content"], json.loads(raw))
    assert accounting.format_delta < 0  # shorter than the raw JSON, question included


@pytest.mark.parametrize(
    "raw",
    ["42", '"a string"', "true", "[1, 2", '{"a": NaN}', '[Infinity]', "[" * 300 + "]" * 300, "[" * 100_000, "   ",
     ""],
)
def test_content_that_is_not_a_safe_json_object_or_array_stays_text(raw: str) -> None:
    served, _ = serve(completion(raw, usage=USAGE))
    assert loads(served["choices"][0]["message"]["content"])["response"]["content"] == raw


def test_json_answer_keeps_exact_numbers() -> None:
    raw = '{"big": 123456789012345678901234567890, "f": 1.0, "z": -0.0, "b": true}'
    served, _ = serve(completion(raw, usage=USAGE))
    assert strict_equal(loads(served["choices"][0]["message"]["content"])["response"]["content"], json.loads(raw))


def test_every_choice_gets_its_envelope_and_the_delta_sums_them() -> None:
    answers = [PROSE, json.dumps(RECORDS)]
    served, accounting = serve(completion(*answers, usage=USAGE))
    documents = [c["message"]["content"] for c in served["choices"]]
    assert loads(documents[0])["response"]["content"] == PROSE
    assert strict_equal(loads(documents[1])["response"]["content"], RECORDS)
    expected = sum(tokens.count_tokens(d) - tokens.count_tokens(a) for d, a in zip(documents, answers, strict=True))
    assert accounting.format_delta == expected


def test_no_question_is_null() -> None:
    served, _ = serve(completion(PROSE, usage=USAGE), question=None)
    assert loads(served["choices"][0]["message"]["content"])["semantic_request"] is None


def test_a_long_question_is_shown_with_its_middle_cut_out() -> None:
    question = "START " + "pasted document line\n" * 500 + " END"
    served, _ = serve(completion(PROSE, usage=USAGE), question=question)
    shown = loads(served["choices"][0]["message"]["content"])["semantic_request"]
    assert len(shown) == QUESTION_MAX_CHARS + len(QUESTION_CUT_MARK)
    assert shown.startswith("START ") and shown.endswith(" END") and QUESTION_CUT_MARK in shown
    exact = "x" * QUESTION_MAX_CHARS
    served, _ = serve(completion(PROSE, usage=USAGE), question=exact)
    assert loads(served["choices"][0]["message"]["content"])["semantic_request"] == exact


def test_streamed_tauq_hit_reassembles_to_the_same_document() -> None:
    raw = json.dumps({"users": RECORDS})
    served, _ = serve(completion(raw, usage=USAGE), stream=True)
    events = b"".join(replay_events(served, include_usage=True))
    assembler = StreamAssembler()
    for start in range(0, len(events), 7):  # arbitrary network splits
        assembler.feed(events[start : start + 7])
    rebuilt = assembler.completion()
    assert rebuilt is not None
    document = rebuilt["choices"][0]["message"]["content"]
    assert document == served["choices"][0]["message"]["content"]
    assert strict_equal(loads(document)["response"]["content"], {"users": RECORDS})


# ---------------------------------------------------------------------------- raw


@pytest.mark.parametrize("stream", [False, True])
def test_raw_is_the_content_byte_for_byte(stream: bool) -> None:
    cached = completion(json.dumps(RECORDS, indent=1), usage=USAGE)
    served, accounting = serve(cached, fmt=RAW, stream=stream)
    assert served == cached
    assert (accounting.format, accounting.format_delta, accounting.reason) == (RAW, 0, REASON_REQUESTED_RAW)


@pytest.mark.parametrize(
    ("cached", "req", "reason"),
    [
        (completion('{"city": "Paris"}', usage=USAGE), request(response_format={"type": "json_object"}),
         REASON_JSON_OUTPUT),
        (completion('{"city": "Paris"}', usage=USAGE),
         request(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
         REASON_JSON_OUTPUT),
        (completion(PROSE, usage=USAGE), request(logprobs=True, top_logprobs=2), REASON_LOGPROBS),
        (completion(None, usage=USAGE, tool_calls=[{"id": "call_1", "type": "function",
                                                    "function": {"name": "f", "arguments": "{}"}}]),
         request(), REASON_TOOL_CALLS),
        (completion("Let me look that up.", usage=USAGE, tool_calls=[
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]),
         request(), REASON_TOOL_CALLS),
        (completion(None, usage=USAGE, function_call={"name": "f", "arguments": "{}"}), request(), REASON_TOOL_CALLS),
        (completion(None, usage=USAGE, refusal="I can't help with that."), request(), REASON_NOT_TEXT),
        ({"id": "x", "choices": []}, request(), REASON_NOT_TEXT),
    ],
    ids=["json_object", "json_schema", "logprobs", "tool_calls", "tool_calls_with_text", "function_call",
         "refusal", "no_choices"],
)
@pytest.mark.parametrize("stream", [False, True])
def test_never_tauq_cases_are_served_raw_even_when_tauq_is_asked(
    cached: dict[str, Any], req: dict[str, Any], reason: str, stream: bool
) -> None:
    served, accounting = serve(cached, req=req, stream=stream)
    assert served == cached
    assert (accounting.format, accounting.format_delta, accounting.reason) == (RAW, 0, reason)


def test_tool_calls_finish_reason_alone_is_enough() -> None:
    cached = completion("", usage=USAGE)
    cached["choices"][0]["finish_reason"] = "tool_calls"
    served, accounting = serve(cached)
    assert served == cached and accounting.reason == REASON_TOOL_CALLS


# ---------------------------------------------------------------------------- auto

# What Aider parses out of an answer: one SEARCH/REPLACE edit block. An envelope around it
# hid the block from Aider and lost the edit.
EDIT_BLOCK = (
    "hello.py\n```python\n<<<<<<< SEARCH\ndef greet(name):\n=======\ndef welcome(name):\n"
    ">>>>>>> REPLACE\n```\n"
)


def test_auto_is_the_default() -> None:
    assert CacheSettings.model_fields["response_format"].default is AUTO


@pytest.mark.parametrize("content", [EDIT_BLOCK, PROSE, "```python\nprint('hi')\n```", '{"ok": true}'],
                         ids=["edit_block", "prose", "code", "short_json"])
@pytest.mark.parametrize("stream", [False, True])
def test_auto_serves_raw_unless_the_envelope_is_shorter(content: str, stream: bool) -> None:
    cached = completion(content, usage=USAGE)
    served, accounting = serve(cached, fmt=AUTO, stream=stream)
    assert served == cached  # byte for byte: the client parses what the provider wrote
    assert (accounting.format, accounting.format_delta, accounting.reason) == (RAW, 0, REASON_AUTO_RAW)
    # ... because the envelope would have cost tokens here
    _, tauq = serve(cached, fmt=TAUQ, stream=stream)
    assert tauq.format is TAUQ and tauq.format_delta > 0


def test_auto_replays_an_edit_block_unchanged_in_a_stream() -> None:
    served, _ = serve(completion(EDIT_BLOCK, usage=USAGE), fmt=AUTO, stream=True)
    assembler = StreamAssembler()
    for event in replay_events(served, include_usage=True):
        assembler.feed(event)
    rebuilt = assembler.completion()
    assert rebuilt is not None and rebuilt["choices"][0]["message"]["content"] == EDIT_BLOCK


def test_auto_wraps_a_json_answer_when_that_saves_tokens() -> None:
    raw = json.dumps({"users": RECORDS, "total": 20}, indent=2)
    served, accounting = serve(completion(raw, usage=USAGE), fmt=AUTO)
    document = served["choices"][0]["message"]["content"]
    assert accounting.format is TAUQ and accounting.reason == REASON_TAUQ
    assert accounting.format_delta == tokens.count_tokens(document) - tokens.count_tokens(raw) < 0
    assert strict_equal(loads(document)["response"]["content"], json.loads(raw))


def test_auto_never_wraps_what_is_never_tauq() -> None:
    raw = json.dumps({"users": RECORDS})
    served, accounting = serve(completion(raw, usage=USAGE), fmt=AUTO, req=request(response_format={"type": "json_object"}))
    assert served["choices"][0]["message"]["content"] == raw and accounting.reason == REASON_JSON_OUTPUT


# ---------------------------------------------------------------------------- accounting


@pytest.mark.parametrize("fmt", [TAUQ, RAW])
def test_tokens_saved_uses_the_providers_usage(fmt: ResponseFormat) -> None:
    _, accounting = serve(completion(PROSE, usage=USAGE), fmt=fmt)
    assert accounting.tokens_saved == 51 + 79


def test_tokens_saved_without_usage_counts_prompt_and_answer() -> None:
    req = request()
    _, accounting = serve(completion(PROSE, usage=None), req=req)
    assert accounting.tokens_saved == tokens.count_prompt_tokens(req) + tokens.count_tokens(PROSE)
    assert accounting.tokens_saved > tokens.count_tokens(PROSE) > 0


def test_tokens_saved_fills_in_only_the_missing_half() -> None:
    req = request()
    _, accounting = serve(completion(PROSE, usage={"completion_tokens": 79}), req=req)
    assert accounting.tokens_saved == tokens.count_prompt_tokens(req) + 79
    _, accounting = serve(completion(PROSE, usage={"prompt_tokens": 51, "completion_tokens": "79"}), req=req)
    assert accounting.tokens_saved == 51 + tokens.count_tokens(PROSE)


def test_tokens_saved_counts_tool_call_arguments_without_usage() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    req = request()
    _, accounting = serve(completion(None, usage=None, tool_calls=[call]), req=req)
    answer = tokens.count_tokens("get_weather") + tokens.count_tokens('{"city": "Paris"}')
    expected = tokens.count_prompt_tokens(req) + answer
    assert accounting.tokens_saved == expected


def test_format_delta_is_served_minus_raw_tokens() -> None:
    served, accounting = serve(completion(PROSE, usage=USAGE))
    document = served["choices"][0]["message"]["content"]
    assert accounting.format_delta == tokens.count_tokens(document) - tokens.count_tokens(PROSE)
    assert accounting.format_delta > 0  # prose: the envelope costs tokens, and says so
