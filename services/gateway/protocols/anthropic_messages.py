"""Anthropic Messages (``POST /v1/messages``, with or without ``?beta=true``): Claude Code and
the ``anthropic`` SDKs.

The request is forwarded untouched. The gateway validates only what it relies on itself
(``model``, ``max_tokens``, ``messages``, ``system``, ``stream``, ``tools``); everything else
(``thinking``, ``output_config``, ``context_management``, unknown fields) is the upstream's
business, and stays in the key.

**The exact key** is the request without what changes on every run and not the answer:
``metadata`` (Claude Code puts a per-run session id in ``metadata.user_id``), ``stream``, and
the ``cache_control`` prompt-caching markers, which move from turn to turn (removed where the
API puts them: top level, tools, system blocks, messages and their blocks; a key of that name
inside a tool's schema or a tool call's input is content). The string shorthand of ``system``
and of a message's ``content`` is keyed as the one text block it stands for. Measured with the
real CLI (``../shared/AGENTS.md``), two runs of one prompt then share one key.

**The question** is the text of the last ``user`` message without its ``<system-reminder>``
blocks (Claude Code puts the date and CLAUDE.md there, beside the user's own words).
``system``-role messages after it (Claude Code's trailing agent list: not in the public API,
but sent and accepted) and the reminder blocks belong to the context, not the question. A
last user message carrying anything but text (tool results, images, documents) or a last
assistant message (a prefill) means the exact tier only.

The ``anthropic-version`` and ``anthropic-beta`` headers change the answer too: they are
folded into the key and the context (``answer_headers``), the betas as a set.

**The context** is everything else, so a request with an output schema (``output_config.format``:
Claude Code's title call) never shares entries with one without. One value is normalised
there, and only there: the ``cc_version=<version>.<3 hex>`` suffix of Claude Code's billing
header block, which the CLI derives from the prompt. It says nothing the question does not,
and kept in the context it would make every rewording a context of its own (no semantic hit
could ever happen); the version itself stays in.

**Stored** only when complete: ``stop_reason`` ``end_turn``, ``tool_use`` or ``stop_sequence``
(the client's own stop sequence, part of the key: as normal an end as ``end_turn``, like
OpenAI's ``stop`` which covers both), never ``max_tokens``, ``refusal``, ``pause_turn`` (the
server paused a long turn and expects it resumed) or anything unknown. A stream is stored
only when it ended with ``message_stop`` and no ``error`` event. Thinking blocks are kept
exactly as received, signatures included: a client sends them back on the next turn, and the
API checks the signature.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    wrong_type,
)
from services.gateway.protocols.question import asked_part

# Roles a message may have. "system" is not in the public API, but Claude Code sends one after
# the user message and the API accepts it (beta mid-conversation-system).
_ROLES = frozenset({"user", "assistant", "system"})
# Per-run values and transport flags: they never change the answer.
NON_SEMANTIC_FIELDS = frozenset({"metadata", "stream"})
MARKER = "cache_control"
REMINDER_PREFIX = "<system-reminder>"
CACHEABLE_STOP_REASONS = frozenset({"end_turn", "tool_use", "stop_sequence"})
# Blocks that ask the client (or the provider) to run a tool: the answer is this exact
# context's decision. Server tools (web search, code execution) also depend on the moment.
_TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
# Blocks a hit may carry besides text without changing how its text is presented.
_THINKING_BLOCKS = frozenset({"thinking", "redacted_thinking"})

# Claude Code's first system block: "x-anthropic-billing-header: cc_version=2.1.197.39a;
# cc_entrypoint=sdk-cli;". The 3-hex suffix is derived from the prompt.
BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"
# Only that exact shape is rewritten: another one keeps its suffix (fewer semantic hits, never
# a wrong one).
_BILLING_SUFFIX = re.compile(r"(cc_version=\d+\.\d+\.\d+)\.[0-9a-f]+;")

# Characters per replayed delta: the same trade-off as the chat adapter's replay.
REPLAY_CHUNK_CHARS = 64


# ---------------------------------------------------------------------------- requests


def validate_messages_request(request: dict[str, Any]) -> None:
    require_model(request)
    if "max_tokens" not in request:
        raise GatewayError(ErrorKind.MISSING_FIELD, "missing required parameter 'max_tokens'", param="max_tokens")
    max_tokens = request["max_tokens"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise wrong_type("max_tokens", "a positive integer")
    if "messages" not in request:
        raise GatewayError(ErrorKind.MISSING_FIELD, "missing required parameter 'messages'", param="messages")
    messages = request["messages"]
    if not isinstance(messages, list) or not messages:
        raise wrong_type("messages", "a non-empty array of message objects")
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise wrong_type(param, "an object")
        role = message.get("role")
        if not isinstance(role, str):
            raise GatewayError(ErrorKind.MISSING_FIELD, f"'{param}.role' is required", param=f"{param}.role")
        if role not in _ROLES:
            raise GatewayError(ErrorKind.INVALID_REQUEST,
                               f"'{param}.role' must be 'user' or 'assistant', not {role!r}", param=f"{param}.role")
        if "content" not in message:
            raise GatewayError(ErrorKind.MISSING_FIELD, f"'{param}.content' is required", param=f"{param}.content")
        _validate_blocks(message["content"], f"{param}.content", "a string or an array of content blocks")
    if "system" in request:
        system = request["system"]
        _validate_blocks(system, "system", "a string or an array of text blocks")
        if isinstance(system, list):
            for j, block in enumerate(system):
                if block.get("type") != "text" or not isinstance(block.get("text"), str):
                    raise wrong_type(f"system[{j}]", "a text block ({\"type\": \"text\", \"text\": ...})")
    optional_bool(request, "stream")
    tools = request.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise wrong_type("tools", "an array of tool objects")


def _validate_blocks(value: Any, param: str, expected: str) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise wrong_type(param, expected)
    for j, block in enumerate(value):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise wrong_type(f"{param}[{j}]", "a content block object with a string 'type'")


def _block_without_marker(block: Any) -> Any:
    """A content block without its cache_control marker, and so the blocks a tool_result
    nests in its own content. Only the places the API puts markers: a key named
    ``cache_control`` inside a tool's input or a JSON schema is the request's content."""
    if not isinstance(block, dict):
        return block
    out = {k: v for k, v in block.items() if k != MARKER}
    if out.get("type") == "tool_result" and isinstance(out.get("content"), list):
        out["content"] = [_block_without_marker(b) for b in out["content"]]
    return out


def without_markers(request: dict[str, Any]) -> dict[str, Any]:
    """The request without ``cache_control`` markers wherever the API lets them sit: at the
    top level (automatic caching), on tools, on system blocks, on messages and on their
    content blocks (a tool_result's nested blocks too)."""
    out = {k: v for k, v in request.items() if k != MARKER}
    if isinstance(out.get("tools"), list):
        out["tools"] = [_block_without_marker(t) for t in out["tools"]]
    if isinstance(out.get("system"), list):
        out["system"] = [_block_without_marker(b) for b in out["system"]]
    if isinstance(out.get("messages"), list):
        messages = []
        for message in out["messages"]:
            if isinstance(message, dict):
                message = {k: v for k, v in message.items() if k != MARKER}
                if isinstance(message.get("content"), list):
                    message["content"] = [_block_without_marker(b) for b in message["content"]]
            messages.append(message)
        out["messages"] = messages
    return out


def _as_blocks(content: Any) -> Any:
    # the API documents a string as shorthand for one text block: the model sees the same
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def stripped_request(request: dict[str, Any]) -> dict[str, Any]:
    """The request as the exact key sees it: no per-run fields, no markers, and the string
    shorthand of ``system`` and of a message's ``content`` written as the one text block it
    stands for."""
    out = without_markers({k: v for k, v in request.items() if k not in NON_SEMANTIC_FIELDS})
    if "system" in out:
        out["system"] = _as_blocks(out["system"])
    if isinstance(out.get("messages"), list):
        out["messages"] = [{**m, "content": _as_blocks(m["content"])} if isinstance(m, dict) and "content" in m
                           else m for m in out["messages"]]
    return out


def canonical_request(request: dict[str, Any]) -> bytes:
    return canonical_json(stripped_request(request))


def _question_index(messages: list[Any]) -> int | None:
    """The index of the last user message when only system messages follow it."""
    index = len(messages) - 1
    while index >= 0 and messages[index].get("role") == "system":
        index -= 1
    if index < 0 or messages[index].get("role") != "user":
        return None  # an assistant prefill: the answer continues it, exact tier only
    return index


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _is_reminder(block: dict[str, Any]) -> bool:
    return block.get("text", "").lstrip().startswith(REMINDER_PREFIX)


def _question_blocks(message: dict[str, Any]) -> list[int] | None:
    """Positions of the blocks that hold the asked text; None when the message carries
    anything but text (tool results, images, documents: the answer depends on more than
    words) or no asked text at all."""
    blocks = _blocks(message.get("content"))
    if not blocks or not all(b.get("type") == "text" and isinstance(b.get("text"), str) for b in blocks):
        return None
    positions = [j for j, b in enumerate(blocks) if not _is_reminder(b)]
    return positions or None


def semantic_question(request: dict[str, Any]) -> str | None:
    """The asked text of the last user message, or None (exact tier only)."""
    messages = request["messages"]
    index = _question_index(messages)
    if index is None:
        return None
    positions = _question_blocks(messages[index])
    if positions is None:
        return None
    blocks = _blocks(messages[index]["content"])
    text = "\n".join(blocks[j]["text"] for j in positions)
    if not text.strip():
        return None
    return asked_part(text).question


def _without_billing_suffix(system: Any) -> Any:
    if not isinstance(system, list):
        return system
    out = []
    for block in system:
        text = block.get("text")
        if isinstance(text, str) and text.startswith(BILLING_HEADER_PREFIX):
            block = {**block, "text": _BILLING_SUFFIX.sub(r"\1;", text)}
        out.append(block)
    return out


def context_of(request: dict[str, Any]) -> dict[str, Any]:
    """The request with the question taken out: what must be equal for a semantic hit.

    The asked blocks of the last user message are replaced by one placeholder (holding what
    ``asked_part`` left around the question, and those blocks without their text); its
    reminder blocks, the messages before and
    after it, system, tools, thinking, output_config and every other field stay in.
    """
    context = copy.deepcopy(stripped_request(request))
    messages = context["messages"]
    index = _question_index(messages)
    if index is not None and (positions := _question_blocks(messages[index])) is not None:
        blocks = _blocks(messages[index]["content"])
        text = "\n".join(blocks[j]["text"] for j in positions)
        kept: list[dict[str, Any]] = []
        for j, block in enumerate(blocks):
            if j == positions[0]:
                # the asked blocks' other fields (all but their text) stay in, like everything else
                others = [{k: v for k, v in blocks[p].items() if k != "text"} for p in positions]
                kept.append({"type": "reflex.question", "surroundings": asked_part(text).surroundings,
                             "blocks": others})
            elif j not in positions:
                kept.append(block)
        messages[index] = {**messages[index], "content": kept}
    if "system" in context:
        context["system"] = _without_billing_suffix(context["system"])
    return context


def wants_json_output(request: dict[str, Any]) -> bool:
    """The request asked for structured output (its clients parse the text)."""
    config = request.get("output_config")
    if isinstance(config, dict) and config.get("format") is not None:
        return True
    return request.get("output_format") is not None  # the structured-outputs beta's name


# ---------------------------------------------------------------------------- answers


def is_complete(answer: dict[str, Any]) -> bool:
    return (
        answer.get("type") == "message"
        and answer.get("stop_reason") in CACHEABLE_STOP_REASONS
        and isinstance(answer.get("content"), list)
        and all(isinstance(b, dict) for b in answer["content"])
    )


def calls_tools(answer: dict[str, Any]) -> bool:
    if answer.get("stop_reason") == "tool_use":
        return True
    return any(isinstance(b, dict) and b.get("type") in _TOOL_BLOCKS for b in answer.get("content") or ())


class StreamAssembler(StreamAssembly):
    """Parses Messages SSE as it is relayed and rebuilds the ``message`` a non-streaming call
    returns: text, thinking (with its signature), tool_use input from its partial JSON,
    citations, stop_reason and the final usage.

    It only watches: the relay forwards the upstream's bytes whatever this makes of them. An
    event it cannot follow (an unknown event or delta type, a field of the wrong type, tool
    input that is not JSON) marks the answer not cacheable; it never raises.
    """

    def __init__(self) -> None:
        self._sse = SseParser()
        self._message: dict[str, Any] | None = None
        self._blocks: dict[int, dict[str, Any]] = {}
        self._partial_json: dict[int, list[str]] = {}
        self._done = False  # saw message_stop
        self.broken = False  # an error event or something we could not follow: never cached

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> None:
        for _, payload in self._sse.feed(data):
            if self.broken:
                continue
            try:
                self._event(orjson.loads(payload))
            except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError, KeyError):
                self.broken = True

    def _event(self, event: Any) -> None:
        if not isinstance(event, dict):
            raise TypeError("an event is not an object")
        kind = event.get("type")
        if kind == "ping":
            return
        if kind == "message_start":
            message = event["message"]
            if not isinstance(message, dict) or self._message is not None:
                raise TypeError("a second message_start, or one without a message object")
            self._message = copy.deepcopy(message)
            return
        if self._message is None or self._done:
            raise ValueError(f"{kind} outside a message")
        if kind == "content_block_start":
            index, block = self._index(event), event["content_block"]
            if not isinstance(block, dict) or index in self._blocks:
                raise TypeError("bad content_block_start")
            self._blocks[index] = copy.deepcopy(block)
        elif kind == "content_block_delta":
            self._delta(self._blocks[self._index(event)], self._index(event), event["delta"])
        elif kind == "content_block_stop":
            index = self._index(event)
            block = self._blocks[index]
            pieces = self._partial_json.pop(index, None)
            if pieces is not None and "".join(pieces).strip():
                block["input"] = orjson.loads("".join(pieces))  # not JSON: raises, broken
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            for key in ("stop_reason", "stop_sequence"):
                if key in delta:
                    self._message[key] = delta[key]
            usage = event.get("usage")
            if isinstance(usage, dict):
                # cumulative figures: the last ones win (output_tokens, and the input ones
                # when the API repeats them here)
                merged = dict(self._message.get("usage") or {})
                merged.update({k: v for k, v in usage.items() if v is not None})
                self._message["usage"] = merged
        elif kind == "message_stop":
            self._done = True
        else:
            # "error", or an event this version does not know: the answer may be incomplete
            self.broken = True

    @staticmethod
    def _index(event: dict[str, Any]) -> int:
        index = event["index"]
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError("index is not an integer")
        return index

    def _delta(self, block: dict[str, Any], index: int, delta: Any) -> None:
        kind = delta["type"]
        if kind == "text_delta":
            block["text"] = _str(block.get("text", "")) + _str(delta["text"])
        elif kind == "input_json_delta":
            self._partial_json.setdefault(index, []).append(_str(delta["partial_json"]))
        elif kind == "thinking_delta":
            block["thinking"] = _str(block.get("thinking", "")) + _str(delta["thinking"])
        elif kind == "signature_delta":
            block["signature"] = _str(block.get("signature", "")) + _str(delta["signature"])
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta["citation"])
        else:
            raise ValueError(f"unknown delta type {kind!r}")

    def answer(self) -> dict[str, Any] | None:
        if not self._done or self.broken or self._message is None or self._partial_json:
            return None
        message = dict(self._message)
        message["content"] = [self._blocks[i] for i in sorted(self._blocks)]
        return message if is_complete(message) else None


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


def _chunks(text: str) -> Iterator[str]:
    for start in range(0, len(text), REPLAY_CHUNK_CHARS):
        yield text[start : start + REPLAY_CHUNK_CHARS]


def replay_events(answer: dict[str, Any]) -> Iterator[bytes]:
    """A cached ``message`` as the SSE events the Messages API sends: ``message_start`` (the
    message with no content yet), per block ``content_block_start`` / ``_delta`` / ``_stop``
    (text, thinking then its signature, tool input as JSON), ``message_delta`` with the
    stop_reason and the usage the answer first had, ``message_stop``."""
    usage = answer.get("usage") or {}
    start = {k: v for k, v in answer.items() if k != "content"}
    start.update(content=[], stop_reason=None, stop_sequence=None)
    yield _event("message_start", {"message": start})
    for index, block in enumerate(answer.get("content") or ()):
        kind = block.get("type")
        if kind == "text":
            opening = {"type": "text", "text": ""}
            if "citations" in block:
                opening["citations"] = []
            yield _event("content_block_start", {"index": index, "content_block": opening})
            for piece in _chunks(block.get("text", "")):
                yield _event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": piece}})
            for citation in block.get("citations") or ():
                yield _event("content_block_delta",
                             {"index": index, "delta": {"type": "citations_delta", "citation": citation}})
        elif kind == "thinking":
            yield _event("content_block_start",
                         {"index": index, "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
            for piece in _chunks(block.get("thinking", "")):
                yield _event("content_block_delta",
                             {"index": index, "delta": {"type": "thinking_delta", "thinking": piece}})
            yield _event("content_block_delta",
                         {"index": index, "delta": {"type": "signature_delta", "signature": block.get("signature", "")}})
        elif kind in _TOOL_BLOCKS:
            yield _event("content_block_start", {"index": index, "content_block": {**block, "input": {}}})
            arguments = orjson.dumps(block.get("input", {})).decode()
            for piece in _chunks(arguments):
                yield _event("content_block_delta",
                             {"index": index, "delta": {"type": "input_json_delta", "partial_json": piece}})
        else:
            # redacted_thinking, server tool results, ...: the API sends these whole
            yield _event("content_block_start", {"index": index, "content_block": block})
        yield _event("content_block_stop", {"index": index})
    yield _event("message_delta", {
        "delta": {"stop_reason": answer.get("stop_reason"), "stop_sequence": answer.get("stop_sequence")},
        "usage": usage,
    })
    yield _event("message_stop", {})


def fresh_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


# ---------------------------------------------------------------------------- the adapter


class AnthropicMessages(ProtocolAdapter):
    name = "anthropic.messages"
    route = "/v1/messages"
    upstream = UpstreamName.ANTHROPIC
    upstream_path = "/v1/messages"
    dialect = ErrorDialect.ANTHROPIC
    answer_header_names = ("anthropic-version", "anthropic-beta")

    def parse(self, body: bytes) -> ParsedRequest:
        request = decode_json_object(body)
        validate_messages_request(request)
        return self.neutral_form(
            request,
            canonical=canonical_request(request),
            question=semantic_question(request),
            context_source=lambda: context_bytes(self.name, context_of(request)),
        )

    def is_complete(self, answer: dict[str, Any]) -> bool:
        return is_complete(answer)

    def calls_tools(self, answer: dict[str, Any]) -> bool:
        return calls_tools(answer)

    def assembler(self) -> StreamAssembler:
        return StreamAssembler()

    def as_fresh_answer(self, answer: dict[str, Any], request: ParsedRequest) -> dict[str, Any]:
        fresh = copy.deepcopy(answer)
        fresh["id"] = fresh_message_id()
        fresh["model"] = request.model
        return fresh

    def raw_reason(self, answer: dict[str, Any], request: ParsedRequest) -> HitReason | None:
        if wants_json_output(request.body):
            return HitReason.JSON_OUTPUT
        content = answer.get("content")
        if not isinstance(content, list) or not content:
            return HitReason.NOT_TEXT
        if calls_tools(answer):
            return HitReason.TOOL_CALLS
        for block in content:
            kind = block.get("type")
            if kind in _THINKING_BLOCKS:
                continue
            # citations point into the text: an envelope around it would move them
            if kind != "text" or not isinstance(block.get("text"), str) or block.get("citations"):
                return HitReason.NOT_TEXT
        return None

    def text_slots(self, answer: dict[str, Any]) -> Iterator[tuple[str, Callable[[str], None]]]:
        for block in answer.get("content") or ():
            if block.get("type") == "text":
                yield block["text"], lambda text, b=block: b.__setitem__("text", text)

    def replay(self, answer: dict[str, Any], request: ParsedRequest) -> Iterable[bytes]:
        return replay_events(answer)

    def usage_tokens(self, answer: dict[str, Any]) -> int:
        """Every input token (uncached, written to and read from the provider's prompt cache:
        Claude Code's input is mostly cache reads, all billed) plus the output tokens."""
        usage = answer.get("usage")
        if not isinstance(usage, dict):
            return 0
        return sum(_count(usage.get(k)) for k in
                   ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens"))

    def answer_headers(self, headers: Mapping[str, str]) -> Any:
        """The API version and the beta features: both change what the model does and how
        the answer is shaped (interleaved thinking, token-efficient tools, ...). The betas
        are a set: their order says nothing."""
        betas = {b.strip() for b in headers.get("anthropic-beta", "").split(",")} - {""}
        return {"anthropic-version": headers.get("anthropic-version", "").strip(), "anthropic-beta": sorted(betas)}

    def mock_answer(self, request: ParsedRequest, text: str, answer_id: str) -> dict[str, Any]:
        input_tokens = len(request.canonical) // 4
        return {
            "id": "msg_mock_" + answer_id,
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": len(text.split())},
        }
