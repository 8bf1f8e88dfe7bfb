"""The fake upstream's OpenAI Responses endpoints: ``POST /v1/responses`` (streaming and not),
``GET`` / ``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``.

Registered by ``FakeUpstream.add_routes``; the handlers record each call on the FakeUpstream
(``fake._record``) and honour its ``fail_next`` behaviours, like the chat endpoint:

- ``status(code)``: that status with OpenAI's error envelope;
- ``slow(s)``: answer after ``s`` seconds;
- ``disconnect``: no response at all (non-streaming), or the stream cut after
  ``chunks_before_failure`` events, without ``response.completed``;
- ``gated``: stream one event, then wait for ``fake.gate``;
- ``length`` / ``content_filter``: ``status: incomplete`` with ``incomplete_details.reason``
  ``max_output_tokens`` / ``content_filter`` (a stream ends with ``response.incomplete``);
- ``tool_calls``: a ``function_call`` item (``get_weather``) instead of a message;
- ``Behaviour(FAILED)``: ``status: failed`` with an ``error`` (a stream ends with ``response.failed``);
- ``Behaviour(STREAM_ERROR)``: a stream that sends an ``error`` event after the first text delta.

Answers name their call number and the question ("Answer #3 to: ..."), so a test can tell a
replay from the cache (same number) from a fresh upstream answer. The question is the text of
the last user message without its ``<environment_context>`` parts, as Codex sends it (or a
plain string ``input``). A request with a JSON output format (``text.format``, Codex's title
call) gets a JSON text answer. Responses the fake produced can be fetched by id, as the real
API does for ``store`` true; ids are derived from the call number, never random.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from tests.support.fake_upstream import Behaviour, FakeUpstream

RESPONSES_PATH = "/v1/responses"
# Usage the fake reports: a fixed input figure (so a hit's reported usage is checkable), and
# output tokens counted as words.
INPUT_TOKENS = 17
CACHED_INPUT_TOKENS = 3
TOOL_ARGUMENTS = '{"city": "Paris", "unit": "c"}'
CREATED_AT = 1_760_000_000  # fixed: the bodies are deterministic

# Behaviour kinds of this protocol beside fake_upstream's (use ``Behaviour(FAILED)``).
FAILED = "failed"
STREAM_ERROR = "stream_error"

_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def add_routes(fake: FakeUpstream, app: web.Application) -> None:
    """Add this protocol's routes to the fake provider's app."""
    # What this app has answered, by response id (the provider's stored responses). It lives in
    # this closure, one per app, so two fakes never share it.
    stored: dict[str, dict[str, Any]] = {}

    async def create(request: web.Request) -> web.StreamResponse:
        return await _create(fake, request, stored)

    async def retrieve(request: web.Request) -> web.Response:
        fake._record(request.path, None, dict(request.headers))
        response = stored.get(request.match_info["response_id"])
        if response is None:
            return _not_found(request.match_info["response_id"])
        return web.json_response(response)

    async def delete(request: web.Request) -> web.Response:
        fake._record(request.path, None, dict(request.headers))
        response_id = request.match_info["response_id"]
        if stored.pop(response_id, None) is None:
            return _not_found(response_id)
        return web.json_response({"id": response_id, "object": "response", "deleted": True})

    async def input_items(request: web.Request) -> web.Response:
        fake._record(request.path, None, dict(request.headers))
        if request.match_info["response_id"] not in stored:
            return _not_found(request.match_info["response_id"])
        return web.json_response({"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False})

    app.router.add_post(RESPONSES_PATH, create)
    app.router.add_get(RESPONSES_PATH + "/{response_id}", retrieve)
    app.router.add_delete(RESPONSES_PATH + "/{response_id}", delete)
    app.router.add_get(RESPONSES_PATH + "/{response_id}/input_items", input_items)


def _not_found(response_id: str) -> web.Response:
    return web.json_response(
        {"error": {"message": f"No response found with id '{response_id}'.", "type": "invalid_request_error",
                   "param": None, "code": None}},
        status=404,
    )


def question_of(body: dict[str, Any]) -> str:
    """The last user message's text without ``<environment_context>`` parts, or the string input."""
    items = body.get("input")
    if isinstance(items, str):
        return items
    for item in reversed(items or []):
        if not isinstance(item, dict) or item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, str):
            return content
        texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "input_text"]
        return " ".join(t for t in texts if not t.lstrip().startswith("<environment_context>"))
    return ""


def answer_text(number: int, body: dict[str, Any]) -> str:
    text = f"Answer #{number} to: {question_of(body)}"
    output_format = (body.get("text") or {}).get("format") or {}
    if output_format.get("type") in ("json_schema", "json_object"):
        return orjson.dumps({"title": text[:60]}).decode()
    return text


def response(number: int, body: dict[str, Any], behaviour: Behaviour) -> dict[str, Any]:
    """The response object the API returns (and sends in response.completed)."""
    text = answer_text(number, body)
    if behaviour.kind == "tool_calls":
        item: dict[str, Any] = {"id": f"fc_fake_{number}", "type": "function_call", "status": "completed",
                                "call_id": f"call_fake_{number}", "name": "get_weather", "arguments": TOOL_ARGUMENTS}
        output_tokens = 9
    else:
        item = {"id": f"msg_fake_{number}", "type": "message", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
        output_tokens = len(text.split())
    status, incomplete, error = "completed", None, None
    if behaviour.kind in _INCOMPLETE_REASONS:
        status, incomplete = "incomplete", {"reason": _INCOMPLETE_REASONS[behaviour.kind]}
        item["status"] = "incomplete"
    elif behaviour.kind == FAILED:
        status, error = "failed", {"code": "server_error", "message": "The fake upstream failed to answer."}
    return {
        "id": f"resp_fake_{number}",
        "object": "response",
        "created_at": CREATED_AT + number,
        "status": status,
        "completed_at": CREATED_AT + number if status == "completed" else None,
        "background": bool(body.get("background")),
        "error": error,
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "model": body.get("model", "fake-model"),
        "output": [item] if status != "failed" else [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "safety_identifier": body.get("safety_identifier"),
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": INPUT_TOKENS,
            "input_tokens_details": {"cached_tokens": CACHED_INPUT_TOKENS},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": INPUT_TOKENS + output_tokens,
        },
        "user": body.get("user"),
    }


async def _create(fake: FakeUpstream, request: web.Request, stored: dict[str, dict[str, Any]]) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    number, behaviour = fake._record(request.path, body, dict(request.headers))
    if behaviour.kind == "slow":
        await asyncio.sleep(behaviour.delay)
    if behaviour.kind == "status":
        return web.json_response(
            {"error": {"message": f"fake upstream failure {behaviour.status}", "type": "server_error",
                       "param": None, "code": "fake"}},
            status=behaviour.status, headers={"x-request-id": f"req_fake_{number}"},
        )
    if behaviour.kind == "disconnect" and not body.get("stream"):
        assert request.transport is not None
        request.transport.close()  # no response at all: the gateway sees a dropped connection
        await asyncio.sleep(0.05)
        raise web.HTTPInternalServerError()
    answer = response(number, body, behaviour)
    if body.get("store", True):
        stored[answer["id"]] = answer
    if not body.get("stream"):
        return web.json_response(answer, headers={"x-request-id": f"req_fake_{number}"})
    return await _stream(fake, request, answer, behaviour)


def stream_events(answer: dict[str, Any], behaviour: Behaviour) -> list[bytes]:
    """The SSE events the Responses API sends for ``answer``: text word by word, function-call
    arguments in two halves, and the terminal event its status calls for."""
    sequence = iter(range(1_000_000))

    def event(event_type: str, /, **data: Any) -> bytes:
        payload = orjson.dumps({"type": event_type, "sequence_number": next(sequence), **data})
        return b"event: " + event_type.encode() + b"\ndata: " + payload + b"\n\n"

    start = {**answer, "status": "in_progress", "completed_at": None, "output": [], "usage": None,
             "error": None, "incomplete_details": None}
    events = [event("response.created", response=start), event("response.in_progress", response=start)]
    for index, item in enumerate(answer["output"]):
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "function_call":
            events.append(event("response.output_item.added", output_index=index,
                                item={**item, "arguments": "", "status": "in_progress"}))
            half = len(item["arguments"]) // 2
            for piece in (item["arguments"][:half], item["arguments"][half:]):
                events.append(event("response.function_call_arguments.delta", **where, delta=piece))
            events.append(event("response.function_call_arguments.done", **where, name=item["name"],
                                arguments=item["arguments"]))
        else:
            events.append(event("response.output_item.added", output_index=index,
                                item={**item, "content": [], "status": "in_progress"}))
            part = item["content"][0]
            events.append(event("response.content_part.added", **where, content_index=0,
                                part={**part, "text": ""}))
            for word_index, word in enumerate(part["text"].split(" ")):
                events.append(event("response.output_text.delta", **where, content_index=0,
                                    delta=word if word_index == 0 else " " + word, logprobs=[]))
                if behaviour.kind == STREAM_ERROR and word_index == 0:
                    events.append(event("error", code="server_error", message="The fake upstream broke mid-stream.",
                                        param=None))
                    return events
            events.append(event("response.output_text.done", **where, content_index=0, text=part["text"], logprobs=[]))
            events.append(event("response.content_part.done", **where, content_index=0, part=part))
        events.append(event("response.output_item.done", output_index=index, item=item))
    terminal = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}
    events.append(event(terminal[answer["status"]], response=answer))
    return events


async def _stream(
    fake: FakeUpstream, request: web.Request, answer: dict[str, Any], behaviour: Behaviour
) -> web.StreamResponse:
    response_ = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-request-id": "req-fake"})
    await response_.prepare(request)
    for n, data in enumerate(stream_events(answer, behaviour)):
        if behaviour.kind == "disconnect" and n == behaviour.chunks_before_failure:
            assert request.transport is not None
            request.transport.close()  # cut mid-stream, no response.completed
            return response_
        await response_.write(data)
        if behaviour.kind == "gated" and n == 0:
            await asyncio.get_running_loop().run_in_executor(None, fake.gate.wait, 30)
        elif fake.chunk_delay:
            await asyncio.sleep(fake.chunk_delay)
    try:
        await response_.write_eof()
    except ConnectionResetError:
        pass  # clients (Codex, the SDKs) hang up as soon as they read response.completed
    return response_
