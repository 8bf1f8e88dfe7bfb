"""OpenAI Responses (``POST /v1/responses``): Codex CLI, and ``client.responses.create`` in the SDKs.

The gateway forwards the request untouched, so it validates only what it relies on itself
(``model``, ``input``, ``instructions``, ``stream``, ``store``, ``background``, ``tools``,
``text``); everything else is the upstream's business.

**What may use the cache.** A Responses request can depend on state the provider holds, which a
cache cannot see: an earlier response (``previous_response_id``), a conversation
(``conversation``), a stored prompt template (``prompt``: its latest version can change), input
items given by reference (``item_reference``), or a job the client will poll (``background:
true``). Such requests are passed through and never looked up or stored.

**``store``.** A response created with ``store`` true (the API's default when the field is
absent) is kept by the provider: the client may fetch it (``GET /v1/responses/{id}``), chain on it
(``previous_response_id``) or find it in the provider's logs and evals. A cache hit has no such
response upstream: a semantic hit's id is new, and even an exact hit's id names the *first*
caller's stored response, with that caller's metadata. So only ``store: false`` requests are
cached (Codex sends ``store: false``, and so does any client that keeps its own history); every
other request is passed through, uncached, under the metric label ``store``. A client that wants
hits sets ``store: false``.

**The exact key** leaves out what changes on every run and not the answer: every input item's
``id`` (Codex gives each item a new one per run), ``prompt_cache_key``, ``client_metadata``,
``user``, ``safety_identifier``, ``metadata``, ``store`` (only ``false`` is cached), ``stream`` /
``stream_options``, and ``cache_control`` markers anywhere. Everything the model sees stays in:
instructions, developer items, the environment context, tools, reasoning effort, the output
format, the model, ``include``, ``tool_choice``, ``parallel_tool_calls``.

**The question** is the text of the last user message, minus its parts that start with
``<environment_context>`` (Codex's cwd/date/shell block, which goes into the context), or a plain
string ``input``. ``developer`` / ``system`` messages after it belong to the context. A last item
that is anything else (a tool output, an assistant message, a reasoning item), or a user message
with images, files or audio, means the exact tier only. A request with an output schema
(``text.format``: Codex's title call) keeps ``text`` in its context, so it never shares entries
with a request without one.
"""

from __future__ import annotations

import copy
import itertools
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from services.gateway.errors import ErrorDialect, ErrorKind, GatewayError
from services.gateway.protocols.base import (
    HitReason,
    ParsedRequest,
    ProtocolAdapter,
    SseParser,
    StreamAssembly,
    UpstreamName,
    canonical_json,
    context_bytes,
    decode_json_object,
    optional_bool,
    require_model,
    without_fields,
    wrong_type,
)
from services.gateway.protocols.openai_chat import REPLAY_CHUNK_CHARS
from services.gateway.protocols.question import asked_part

# Top-level fields that never change the answer: per-run ids and tags, and transport.
NON_SEMANTIC_FIELDS = frozenset({
    "stream", "stream_options", "store", "prompt_cache_key", "client_metadata", "user", "safety_identifier",
    "metadata",
})
# Provider prompt-caching hints: where they sit changes from turn to turn, never the answer.
MARKER_FIELDS = frozenset({"cache_control"})
# Inside input items: the per-run ids of the items (and of anything nested in them).
ITEM_ID_FIELDS = frozenset({"id"})
# Top-level fields naming state held upstream: with any of these set, the cache cannot know
# what the model sees. (field, metric label)
UPSTREAM_STATE_FIELDS = (("previous_response_id", "previous_response_id"), ("conversation", "conversation"),
                         ("prompt", "stored_prompt"))
ITEM_REFERENCE = "item_reference"

_MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
# Messages after the last user message that are still "the same question": instructions.
_TRAILING_INSTRUCTION_ROLES = frozenset({"system", "developer"})
ENVIRONMENT_CONTEXT_TAG = "<environment_context>"
# Output items that are part of a plain answer; any other item is a call (the client's tools,
# or the provider's own: web search, code interpreter, MCP): exact tier only.
_ANSWER_ITEM_TYPES = frozenset({"message", "reasoning"})
_JSON_OUTPUT_TYPES = frozenset({"json_object", "json_schema"})
_LOGPROBS_INCLUDE = "message.output_text.logprobs"
# Terminal stream events besides response.completed: the answer is not stored.
_FAILED_EVENTS = frozenset({"response.failed", "response.incomplete", "error"})


# ---------------------------------------------------------------------------- requests


def validate_responses_request(request: dict[str, Any]) -> None:
    require_model(request)
    items = request.get("input")
    if items is not None and not isinstance(items, (str, list)):
        raise wrong_type("input", "a string or an array of input items")
    if isinstance(items, list):
        for i, item in enumerate(items):
            _validate_item(item, f"input[{i}]")
    instructions = request.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise wrong_type("instructions", "a string or null")
    for name in ("stream", "store", "background"):
        optional_bool(request, name)
    for name, kind, expected in (("tools", list, "an array"), ("text", dict, "an object"),
                                 ("stream_options", dict, "an object")):
        value = request.get(name)
        if value is not None and not isinstance(value, kind):
            raise wrong_type(name, expected)


def _validate_item(item: Any, param: str) -> None:
    if not isinstance(item, dict):
        raise wrong_type(param, "an object")
    if not _is_message(item):
        return  # function_call_output, reasoning, ...: the upstream's to validate
    role = item.get("role")
    if not isinstance(role, str) or role not in _MESSAGE_ROLES:
        raise GatewayError(
            ErrorKind.INVALID_REQUEST, f"'{param}.role' must be one of {sorted(_MESSAGE_ROLES)}", param=f"{param}.role"
        )
    content = item.get("content")
    if not isinstance(content, (str, list)) or (isinstance(content, list)
                                                  and not all(isinstance(p, dict) for p in content)):
        raise wrong_type(f"{param}.content", "a string or an array of content-part objects")


def _is_message(item: Any) -> bool:
    # the "easy" form {"role", "content"} has no type; the full form says "message"
    return isinstance(item, dict) and item.get("type", "message") == "message" and "role" in item


def uncacheable_reason(request: dict[str, Any]) -> str:
    """Why the request must bypass the cache ("" when it may use it)."""
    for name, label in UPSTREAM_STATE_FIELDS:
        if request.get(name) is not None:
            return label
    if request.get("background") is True:
        return "background"
    items = request.get("input")
    if isinstance(items, list) and any(isinstance(i, dict) and i.get("type") == ITEM_REFERENCE for i in items):
        return ITEM_REFERENCE
    if request.get("store") is not False:
        return "store"  # see the module docstring
    return ""


def _stripped(request: dict[str, Any]) -> dict[str, Any]:
    """The request without per-run fields, item ids and cache markers (a new dict)."""
    kept = {k: v for k, v in request.items() if k not in NON_SEMANTIC_FIELDS}
    if isinstance(kept.get("input"), list):
        kept["input"] = without_fields(kept["input"], ITEM_ID_FIELDS)
    return without_fields(kept, MARKER_FIELDS)


def canonical_request(request: dict[str, Any]) -> bytes:
    """Sorted-key JSON of what the model sees: the exact tier's key."""
    return canonical_json(_stripped(request))


def _text_parts(content: Any) -> list[str] | None:
    """A user message's texts, one per part; None when it carries anything but text."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list) and content:
        if not all(isinstance(p, dict) and p.get("type") == "input_text" and isinstance(p.get("text"), str)
                   for p in content):
            return None  # images, files, audio: the answer depends on more than the words
        return [p["text"] for p in content]
    return None


def _question_index(items: list[Any]) -> int | None:
    """The index of the user message that holds the question: the last item, or the last one
    followed only by developer / system messages."""
    index = len(items) - 1
    while index >= 0 and _is_message(items[index]) and items[index].get("role") in _TRAILING_INSTRUCTION_ROLES:
        index -= 1
    if index < 0 or not _is_message(items[index]) or items[index].get("role") != "user":
        return None
    return index


def _split_question(parts: list[str]) -> tuple[str, list[str], str] | None:
    """(question, the environment parts, what surrounds the asked part), or None if no text is left."""
    environment = [p for p in parts if p.lstrip().startswith(ENVIRONMENT_CONTEXT_TAG)]
    asked = [p for p in parts if not p.lstrip().startswith(ENVIRONMENT_CONTEXT_TAG)]
    text = "\n".join(asked)
    if not text.strip():
        return None
    split = asked_part(text)
    return split.question, environment, split.surroundings


def question_and_context(request: dict[str, Any], protocol: str) -> tuple[str | None, bytes]:
    """The question the semantic tiers compare, and the context bytes that must match with it.

    The context is the canonical request with the question taken out (and the environment
    parts and surroundings of the question's message left in), so L2 only ever compares
    questions asked with the same instructions, tools, history, environment and output format.
    """
    stripped = _stripped(request)
    items = stripped.get("input")
    if isinstance(items, str):
        split = _split_question([items])
        if split is None:
            return None, b""
        question, environment, surroundings = split
        stripped["input"] = {"environment": environment, "surroundings": surroundings}
        return question, context_bytes(protocol, stripped)
    if not isinstance(items, list) or not items:
        return None, b""
    index = _question_index(items)
    if index is None:
        return None, b""
    parts = _text_parts(items[index].get("content"))
    split = _split_question(parts) if parts is not None else None
    if split is None:
        return None, b""
    question, environment, surroundings = split
    items = list(items)
    items[index] = {**items[index], "content": {"environment": environment, "surroundings": surroundings}}
    stripped["input"] = items
    return question, context_bytes(protocol, stripped)


# ---------------------------------------------------------------------------- answers


def _status_ok(item: Any) -> bool:
    return isinstance(item, dict) and item.get("status") in (None, "completed")


def is_cacheable(response: dict[str, Any]) -> bool:
    """``status: completed``, no ``incomplete_details``, no ``error``, and a finished output."""
    if response.get("status") != "completed" or response.get("incomplete_details") or response.get("error"):
        return False
    output = response.get("output")
    return isinstance(output, list) and bool(output) and all(_status_ok(item) for item in output)


class ResponsesStreamAssembler(StreamAssembly):
    """Watches a relayed Responses stream; the answer is the ``response`` of ``response.completed``.

    That object is the provider's own final answer, exactly what a non-streaming call returns.
    Where a provider leaves its ``output`` empty (some compatible servers do, expecting clients to
    keep the ``response.output_item.done`` items), the finished items fill it. ``response.failed``,
    ``response.incomplete`` and ``error`` end the stream with nothing to store. It never raises
    into the relay: what it cannot follow only means the answer is not cached.
    """

    def __init__(self) -> None:
        self._sse = SseParser()
        self._items: dict[int, dict[str, Any]] = {}
        self._final: dict[str, Any] | None = None
        self._done = False
        self.broken = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> None:
        for event, payload in self._sse.feed(data):
            if self.broken or payload == b"[DONE]":
                continue
            try:
                self._event(event, orjson.loads(payload))
            except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError, KeyError):
                self.broken = True

    def _event(self, event: str, obj: Any) -> None:
        if not isinstance(obj, dict):
            raise TypeError("event data is not an object")
        kind = obj.get("type") or event
        if kind == "response.completed":
            response = obj["response"]
            if not isinstance(response, dict):
                raise TypeError("response is not an object")
            self._final = response
            self._done = True
        elif kind in _FAILED_EVENTS:
            self.broken = True
            self._done = True
        elif kind == "response.output_item.done":
            index, item = obj["output_index"], obj["item"]
            if not isinstance(index, int) or isinstance(index, bool) or not isinstance(item, dict):
                raise TypeError("output_item.done without an index or an item")
            self._items[index] = item

    def answer(self) -> dict[str, Any] | None:
        if not self._done or self.broken or self._final is None:
            return None
        response = copy.deepcopy(self._final)
        if not response.get("output") and self._items:
            response["output"] = [self._items[i] for i in sorted(self._items)]
        return response if is_cacheable(response) else None


class _Events:
    """SSE events as OpenAI sends them: an ``event:`` line, then ``data:`` with the same
    ``type`` and a ``sequence_number`` counting from 0."""

    def __init__(self) -> None:
        self._sequence = itertools.count()

    def __call__(self, kind: str, /, **fields: Any) -> bytes:
        data = orjson.dumps({"type": kind, "sequence_number": next(self._sequence), **fields})
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def _chunks(text: str) -> Iterator[str]:
    for start in range(0, len(text), REPLAY_CHUNK_CHARS):
        yield text[start : start + REPLAY_CHUNK_CHARS]


def _in_progress(item: dict[str, Any], **changes: Any) -> dict[str, Any]:
    added = {**item, **changes}
    if "status" in item:
        added["status"] = "in_progress"
    return added


def _message_events(event: _Events, item: dict[str, Any], index: int) -> Iterator[bytes]:
    item_id = item.get("id", "")
    yield event("response.output_item.added", output_index=index, item=_in_progress(item, content=[]))
    for part_index, part in enumerate(item.get("content") or []):
        where = {"item_id": item_id, "output_index": index, "content_index": part_index}
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "output_text":
            text = str(part.get("text") or "")
            yield event("response.content_part.added", **where,
                        part={**part, "text": "", "annotations": [], **({"logprobs": []} if "logprobs" in part else {})})
            for piece in _chunks(text):
                yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
            for annotation_index, annotation in enumerate(part.get("annotations") or []):
                yield event("response.output_text.annotation.added", **where, annotation_index=annotation_index,
                            annotation=annotation)
            yield event("response.output_text.done", **where, text=text, logprobs=part.get("logprobs") or [])
        elif kind == "refusal":
            refusal = str(part.get("refusal") or "")
            yield event("response.content_part.added", **where, part={**part, "refusal": ""})
            for piece in _chunks(refusal):
                yield event("response.refusal.delta", **where, delta=piece)
            yield event("response.refusal.done", **where, refusal=refusal)
        else:
            yield event("response.content_part.added", **where, part=part)
        yield event("response.content_part.done", **where, part=part)
    yield event("response.output_item.done", output_index=index, item=item)


def _call_events(event: _Events, item: dict[str, Any], index: int, field: str, prefix: str) -> Iterator[bytes]:
    """function_call (``arguments``) and custom_tool_call (``input``): the text streamed in deltas."""
    where = {"item_id": item.get("id", ""), "output_index": index}
    text = str(item.get(field) or "")
    yield event("response.output_item.added", output_index=index, item=_in_progress(item, **{field: ""}))
    for piece in _chunks(text):
        yield event(f"{prefix}.delta", **where, delta=piece)
    done = {field: text, **({"name": item["name"]} if field == "arguments" and "name" in item else {})}
    yield event(f"{prefix}.done", **where, **done)
    yield event("response.output_item.done", output_index=index, item=item)


def _reasoning_events(event: _Events, item: dict[str, Any], index: int) -> Iterator[bytes]:
    where = {"item_id": item.get("id", ""), "output_index": index}
    added = _in_progress(item, summary=[])
    if "content" in item:
        added["content"] = []
    yield event("response.output_item.added", output_index=index, item=added)
    for summary_index, part in enumerate(item.get("summary") or []):
        text = str(part.get("text") or "") if isinstance(part, dict) else ""
        yield event("response.reasoning_summary_part.added", **where, summary_index=summary_index,
                    part={**part, "text": ""} if isinstance(part, dict) else part)
        for piece in _chunks(text):
            yield event("response.reasoning_summary_text.delta", **where, summary_index=summary_index, delta=piece)
        yield event("response.reasoning_summary_text.done", **where, summary_index=summary_index, text=text)
        yield event("response.reasoning_summary_part.done", **where, summary_index=summary_index, part=part)
    for content_index, part in enumerate(item.get("content") or []):
        text = str(part.get("text") or "") if isinstance(part, dict) else ""
        for piece in _chunks(text):
            yield event("response.reasoning_text.delta", **where, content_index=content_index, delta=piece)
        yield event("response.reasoning_text.done", **where, content_index=content_index, text=text)
    yield event("response.output_item.done", output_index=index, item=item)


def replay_events(response: dict[str, Any]) -> Iterator[bytes]:
    """A cached response as the SSE events the provider sends: ``response.created``,
    ``response.in_progress``, each output item (added, its parts and deltas, done), and
    ``response.completed`` with the whole response. One response id and one item id per item
    throughout, as the SDKs check."""
    event = _Events()
    snapshot = {**response, "status": "in_progress", "output": [], "usage": None}
    if "completed_at" in snapshot:
        snapshot["completed_at"] = None
    yield event("response.created", response=snapshot)
    yield event("response.in_progress", response=snapshot)
    for index, item in enumerate(response.get("output") or []):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "message":
            yield from _message_events(event, item, index)
        elif kind == "function_call":
            yield from _call_events(event, item, index, "arguments", "response.function_call_arguments")
        elif kind == "custom_tool_call":
            yield from _call_events(event, item, index, "input", "response.custom_tool_call_input")
        elif kind == "reasoning":
            yield from _reasoning_events(event, item, index)
        else:
            yield event("response.output_item.added", output_index=index, item=item)
            yield event("response.output_item.done", output_index=index, item=item)
    yield event("response.completed", response=response)


def _fresh_id(old: Any) -> str:
    # keep the provider's prefix (resp_, msg_, fc_, rs_, ...): clients tell item kinds by it
    prefix = old.split("_", 1)[0] if isinstance(old, str) and "_" in old else "item"
    return f"{prefix}_{uuid.uuid4().hex}"


# The response echoes these request fields; they are not in the key, so a hit shows the asker's own.
_ECHOED_PER_RUN = ("metadata", "user", "safety_identifier", "prompt_cache_key")


# ---------------------------------------------------------------------------- the adapter


class Responses(ProtocolAdapter):
    name = "openai.responses"
    route = "/v1/responses"
    upstream = UpstreamName.OPENAI
    upstream_path = "/responses"
    dialect = ErrorDialect.OPENAI

    def parse(self, body: bytes) -> ParsedRequest:
        request = decode_json_object(body)
        validate_responses_request(request)
        reason = uncacheable_reason(request)
        question, context = question_and_context(request, self.name)
        return self.neutral_form(
            request,
            canonical=canonical_request(request),
            question=question,
            context_source=lambda: context,
            uncacheable_reason=reason,
        )

    def is_complete(self, answer: dict[str, Any]) -> bool:
        return is_cacheable(answer)

    def calls_tools(self, answer: dict[str, Any]) -> bool:
        output = answer.get("output")
        if not isinstance(output, list):
            return True  # nothing we can read as a plain answer: exact tier only
        return any(not isinstance(item, dict) or item.get("type") not in _ANSWER_ITEM_TYPES for item in output)

    def assembler(self) -> ResponsesStreamAssembler:
        return ResponsesStreamAssembler()

    def as_fresh_answer(self, answer: dict[str, Any], request: ParsedRequest) -> dict[str, Any]:
        fresh = copy.deepcopy(answer)
        now = int(time.time())
        fresh["id"] = _fresh_id(fresh.get("id") or "resp_")
        fresh["model"] = request.model
        fresh["created_at"] = now
        if fresh.get("completed_at") is not None:
            fresh["completed_at"] = now
        for name in _ECHOED_PER_RUN:
            if name in fresh:
                fresh[name] = request.body.get(name, {} if name == "metadata" else None)
        for item in fresh.get("output") or ():
            if isinstance(item, dict) and "id" in item:
                item["id"] = _fresh_id(item["id"])
        return fresh

    def raw_reason(self, answer: dict[str, Any], request: ParsedRequest) -> HitReason | None:
        body = request.body
        text = body.get("text")
        output_format = text.get("format") if isinstance(text, dict) else None
        if isinstance(output_format, dict) and output_format.get("type") in _JSON_OUTPUT_TYPES:
            return HitReason.JSON_OUTPUT
        include = body.get("include")
        if body.get("top_logprobs") or (isinstance(include, list) and _LOGPROBS_INCLUDE in include):
            return HitReason.LOGPROBS
        output = answer.get("output")
        if not isinstance(output, list) or not output:
            return HitReason.NOT_TEXT
        messages = 0
        for item in output:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "reasoning":
                continue
            if kind != "message":
                return HitReason.TOOL_CALLS if isinstance(kind, str) and kind.endswith(("_call", "_request")) \
                    else HitReason.NOT_TEXT
            messages += 1
            parts = item.get("content")
            if not isinstance(parts, list) or not parts:
                return HitReason.NOT_TEXT
            for part in parts:
                # citations index into the text: an envelope around it would break them
                if (not isinstance(part, dict) or part.get("type") != "output_text"
                        or not isinstance(part.get("text"), str) or part.get("annotations")):
                    return HitReason.NOT_TEXT
                if part.get("logprobs"):
                    return HitReason.LOGPROBS
        return None if messages else HitReason.NOT_TEXT

    def text_slots(self, answer: dict[str, Any]) -> Iterator[tuple[str, Callable[[str], None]]]:
        for item in answer.get("output") or ():
            if item.get("type") != "message":
                continue
            for part in item["content"]:
                yield part["text"], lambda text, p=part: p.__setitem__("text", text)

    def stream_error(self, kind: ErrorKind, message: str) -> bytes:
        # The Responses stream's own error event (the SDK raises on it), not Chat's bare envelope.
        # Its sequence number cannot follow the relayed stream's; clients key on the type.
        event = {"type": "error", "code": kind.value.code, "message": message, "param": None, "sequence_number": 0}
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"

    def replay(self, answer: dict[str, Any], request: ParsedRequest) -> Iterable[bytes]:
        return replay_events(answer)

    def usage_tokens(self, answer: dict[str, Any]) -> int:
        usage = answer.get("usage")
        if not isinstance(usage, dict):
            return 0
        return sum(v for k in ("input_tokens", "output_tokens")
                   if isinstance(v := usage.get(k), int) and not isinstance(v, bool) and v >= 0)

    def mock_answer(self, request: ParsedRequest, text: str, answer_id: str) -> dict[str, Any]:
        body = request.body
        now = int(time.time())
        input_tokens = len(orjson.dumps(body.get("input"))) // 4
        output_tokens = len(text.split())
        return {
            "id": "resp_mock" + answer_id,
            "object": "response",
            "created_at": now,
            "status": "completed",
            "completed_at": now,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "metadata": body.get("metadata") or {},
            "model": request.model,
            "output": [{
                "id": "msg_mock" + answer_id,
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "store": body.get("store", True),
            "temperature": body.get("temperature"),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p"),
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
        }
