"""The fake upstream's Anthropic Messages endpoints: ``POST /v1/messages`` (streaming and
not) and ``POST /v1/messages/count_tokens``.

Registered by ``FakeUpstream.add_routes``; the handlers record each call on the FakeUpstream
(``fake._record``) and honour its ``fail_next`` behaviours, like the chat endpoint:

- ``status(code)``: that status with Anthropic's error envelope;
- ``slow(s)``: answer after ``s`` seconds;
- ``disconnect``: no response at all (non-streaming), or the stream cut after
  ``chunks_before_failure`` events, without ``message_stop``;
- ``gated``: stream one event, then wait for ``fake.gate``;
- ``length``: ``stop_reason: max_tokens``; ``content_filter``: ``refusal``;
  ``Behaviour(PAUSE_TURN)``: ``pause_turn``;
- ``tool_calls``: a text block, then a ``tool_use`` block (``get_weather``);
- ``Behaviour(THINKING)``: a signed ``thinking`` block before the text;
- ``Behaviour(STREAM_ERROR)``: a stream that sends an ``error`` event (overloaded) after the first text.

Answers name their call number and the question ("Answer #3 to: ..."), so a test can tell a
replay from the cache (same number) from a fresh upstream answer. The question is the text
of the last user message without its ``<system-reminder>`` blocks, as Claude Code sends
it. A request with a JSON output schema (``output_config.format``, Claude Code's title call)
gets a JSON text answer. A model alias ending in ``-latest`` is answered by a dated
snapshot name, as the API does. Everything is deterministic: no clocks, no randomness in the bodies.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from tests.support.fake_upstream import Behaviour, FakeUpstream

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
# Usage the fake reports: fixed input figures (so a hit's reported usage is checkable), and
# output tokens counted as words.
INPUT_TOKENS = 21
CACHE_READ_INPUT_TOKENS = 5
THINKING_TEXT = "The user asks a question; answer it briefly."
THINKING_SIGNATURE = "c2lnbmF0dXJlLW9mLXRoZS1mYWtlLXVwc3RyZWFt"  # base64, like the real ones
TOOL_INPUT = {"city": "Paris", "unit": "c"}


# Behaviour kinds of this protocol beside fake_upstream's (use ``Behaviour(THINKING)``; the
# Behaviour class lives in fake_upstream, which imports this module).
THINKING = "thinking"
PAUSE_TURN = "pause_turn"
STREAM_ERROR = "stream_error"

_STOP_REASONS = {"length": "max_tokens", "content_filter": "refusal", "tool_calls": "tool_use",
                 "pause_turn": "pause_turn"}


def add_routes(fake: FakeUpstream, app: web.Application) -> None:
    """Add this protocol's routes to the fake provider's app."""

    async def messages(request: web.Request) -> web.StreamResponse:
        return await _messages(fake, request)

    async def count_tokens(request: web.Request) -> web.Response:
        raw = await request.read()
        body = orjson.loads(raw)
        fake._record(request.path, body, dict(request.headers))
        return web.json_response({"input_tokens": len(raw) // 4})

    app.router.add_post(MESSAGES_PATH, messages)
    app.router.add_post(COUNT_TOKENS_PATH, count_tokens)


def question_of(body: dict[str, Any]) -> str:
    """The last user message's text without ``<system-reminder>`` blocks."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        return " ".join(t for t in texts if not t.lstrip().startswith("<system-reminder>"))
    return ""


def answer_text(number: int, body: dict[str, Any]) -> str:
    text = f"Answer #{number} to: {question_of(body)}"
    output_format = (body.get("output_config") or {}).get("format")
    if isinstance(output_format, dict):
        return orjson.dumps({"title": text[:60]}).decode()
    return text


def served_model(requested: str) -> str:
    """Like the API, an alias is answered by a dated snapshot: ``claude-x-latest`` comes back as
    ``claude-x-20261201`` (so a test can tell a cached answer's model from the request's)."""
    return requested.removesuffix("-latest") + "-20261201" if requested.endswith("-latest") else requested


def message(number: int, body: dict[str, Any], behaviour: Behaviour) -> dict[str, Any]:
    text = answer_text(number, body)
    content: list[dict[str, Any]] = []
    if behaviour.kind == "thinking":
        content.append({"type": "thinking", "thinking": THINKING_TEXT, "signature": THINKING_SIGNATURE})
    content.append({"type": "text", "text": text})
    if behaviour.kind == "tool_calls":
        content.append({"type": "tool_use", "id": f"toolu_fake_{number}", "name": "get_weather", "input": TOOL_INPUT})
    return {
        "id": f"msg_fake_{number}",
        "type": "message",
        "role": "assistant",
        "model": served_model(body.get("model", "fake-model")),
        "content": content,
        "stop_reason": _STOP_REASONS.get(behaviour.kind, "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": INPUT_TOKENS,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": CACHE_READ_INPUT_TOKENS,
            "output_tokens": len(text.split()),
        },
    }


async def _messages(fake: FakeUpstream, request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    # the query (`?beta=true`) is recorded as the pseudo-header ":query", which no real header can be
    number, behaviour = fake._record(request.path, body, {**request.headers, ":query": request.query_string})
    if behaviour.kind == "slow":
        await asyncio.sleep(behaviour.delay)
    if behaviour.kind == "status":
        error_type = {429: "rate_limit_error", 529: "overloaded_error", 400: "invalid_request_error"}.get(
            behaviour.status, "api_error")
        return web.json_response(
            {"type": "error", "error": {"type": error_type, "message": f"fake upstream failure {behaviour.status}"}},
            status=behaviour.status, headers={"request-id": f"req_fake_{number}"},
        )
    if behaviour.kind == "disconnect" and not body.get("stream"):
        assert request.transport is not None
        request.transport.close()  # no response at all: the gateway sees a dropped connection
        await asyncio.sleep(0.05)
        raise web.HTTPInternalServerError()
    answer = message(number, body, behaviour)
    if not body.get("stream"):
        return web.json_response(answer, headers={"request-id": f"req_fake_{number}"})
    return await _stream(fake, request, answer, behaviour)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


def stream_events(answer: dict[str, Any], behaviour: Behaviour) -> list[bytes]:
    """The SSE events the Messages API sends for ``answer``: text word by word, thinking
    then its signature, tool input as partial JSON in two halves."""
    start = {**answer, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**answer["usage"], "output_tokens": 1}}
    events = [_event("message_start", {"message": start}), _event("ping", {})]
    for index, block in enumerate(answer["content"]):
        kind = block["type"]
        if kind == "text":
            events.append(_event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}}))
            for word_index, word in enumerate(block["text"].split(" ")):
                piece = word if word_index == 0 else " " + word
                events.append(_event("content_block_delta",
                                     {"index": index, "delta": {"type": "text_delta", "text": piece}}))
                if behaviour.kind == "stream_error" and word_index == 1:
                    events.append(_event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}))
                    return events  # the API ends the stream after an error event
        elif kind == "thinking":
            events.append(_event("content_block_start", {"index": index, "content_block":
                                                         {"type": "thinking", "thinking": "", "signature": ""}}))
            half = len(block["thinking"]) // 2
            for piece in (block["thinking"][:half], block["thinking"][half:]):
                events.append(_event("content_block_delta",
                                     {"index": index, "delta": {"type": "thinking_delta", "thinking": piece}}))
            events.append(_event("content_block_delta", {"index": index, "delta":
                                                         {"type": "signature_delta", "signature": block["signature"]}}))
        elif kind == "tool_use":
            events.append(_event("content_block_start", {"index": index, "content_block":
                                                         {**block, "input": {}}}))
            args = orjson.dumps(block["input"]).decode()
            half = len(args) // 2
            for piece in (args[:half], args[half:]):
                events.append(_event("content_block_delta",
                                     {"index": index, "delta": {"type": "input_json_delta", "partial_json": piece}}))
        events.append(_event("content_block_stop", {"index": index}))
    events.append(_event("message_delta", {
        "delta": {"stop_reason": answer["stop_reason"], "stop_sequence": answer["stop_sequence"]},
        "usage": {"output_tokens": answer["usage"]["output_tokens"]},
    }))
    events.append(_event("message_stop", {}))
    return events


async def _stream(
    fake: FakeUpstream, request: web.Request, answer: dict[str, Any], behaviour: Behaviour
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "request-id": "req_fake_stream"})
    await response.prepare(request)
    for n, data in enumerate(stream_events(answer, behaviour)):
        if behaviour.kind == "disconnect" and n == behaviour.chunks_before_failure:
            assert request.transport is not None
            request.transport.close()  # cut mid-stream, no message_stop
            return response
        await response.write(data)
        if behaviour.kind == "gated" and n == 0:
            await asyncio.get_running_loop().run_in_executor(None, fake.gate.wait, 30)
        elif fake.chunk_delay:
            await asyncio.sleep(fake.chunk_delay)
    await response.write_eof()
    return response
