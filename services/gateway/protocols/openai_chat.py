"""OpenAI Chat Completions (``POST /v1/chat/completions``): the SDKs, Aider, Continue, LangChain.

The gateway forwards the request untouched, so it validates only what it relies on itself
(``model``, ``messages``, ``stream``, ``stream_options``, ``n``) and what it refuses to cache
meaningfully (the legacy ``functions`` field). Everything else, unknown fields included, is
the upstream's business.

The question is the text of the last user message. ``system`` / ``developer`` messages after
it (Aider puts its edit-format rules there) belong to the context, not the question. A last
message from the assistant or a tool, or a user message that carries anything but text (tool
results, images, files), means the exact tier only.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
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
from services.gateway.protocols.question import asked_part

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Fields that do not change the answer: a streaming and a non-streaming request with the
# same content share one entry, and per-end-user tags do not split the cache.
NON_SEMANTIC_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "store"})
# Provider prompt-caching hints (litellm and others pass Anthropic's through): where they sit
# changes from turn to turn, never the answer.
MARKER_FIELDS = frozenset({"cache_control"})
# Messages after the last user message that are still "the same question": instructions.
_TRAILING_INSTRUCTION_ROLES = frozenset({"system", "developer"})

# Only answers that ended on their own are safe to replay: `length` is truncated,
# `content_filter` is a refusal of this particular sampling, None means the stream broke.
CACHEABLE_FINISH_REASONS = frozenset({"stop", "tool_calls"})
_CALL_FINISH_REASONS = frozenset({"tool_calls", "function_call"})
_JSON_OUTPUT_TYPES = frozenset({"json_object", "json_schema"})

# Characters per replayed content chunk: small enough that a client rendering a hit sees it
# arrive like a stream, large enough that a long answer is not thousands of SSE events.
REPLAY_CHUNK_CHARS = 64
DONE_EVENT = b"data: [DONE]\n\n"
# OpenAI refuses more choices than this ("integer above maximum value"); so does the mock
# provider, which would otherwise build (and block the event loop on) any number of choices.
MAX_CHOICES = 128


# ---------------------------------------------------------------------------- requests


def validate_chat_request(request: dict[str, Any]) -> None:
    if "functions" in request or "function_call" in request:
        param = "functions" if "functions" in request else "function_call"
        raise GatewayError(
            ErrorKind.UNSUPPORTED_FIELD,
            f"the legacy '{param}' field is not supported; use 'tools' and 'tool_choice'",
            param=param,
        )
    require_model(request)
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
            raise GatewayError(
                ErrorKind.INVALID_REQUEST, f"'{param}.role' {role!r} is not a known role", param=f"{param}.role"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise wrong_type(f"{param}.content", "a string, an array of content parts, or null")
        if isinstance(content, list) and not all(isinstance(part, dict) for part in content):
            raise wrong_type(f"{param}.content", "an array of content-part objects")
    optional_bool(request, "stream")
    options = request.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise wrong_type("stream_options", "an object")
    n = request.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise wrong_type("n", "a positive integer")
    if "tools" in request and request["tools"] is not None and not isinstance(request["tools"], list):
        raise wrong_type("tools", "an array")


def canonical_request(request: dict[str, Any]) -> bytes:
    """Sorted-key JSON of the request without the fields that do not change the answer."""
    kept = {k: v for k, v in request.items() if k not in NON_SEMANTIC_FIELDS}
    return canonical_json(without_fields(kept, MARKER_FIELDS))


def _text_of(content: Any) -> str | None:
    """The text of a message's content: the string itself, or its parts when all are text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            return None  # images, audio, files: the answer depends on more than the words
        return "\n".join(p["text"] for p in content)
    return None


def _last_user_index(messages: list[Any]) -> int | None:
    """The index of the message that holds the question: the last one, or the last user
    message followed only by instructions (system / developer)."""
    index = len(messages) - 1
    while index >= 0 and isinstance(messages[index], dict) and messages[index].get("role") in _TRAILING_INSTRUCTION_ROLES:
        index -= 1
    if index < 0 or not isinstance(messages[index], dict) or messages[index].get("role") != "user":
        return None
    return index


def _other_texts(messages: list[Any], index: int) -> list[str]:
    """The text of every message but the question's (system prompt, earlier turns, trailing
    instructions): where ``asked_part`` looks for boilerplate repeated in the question's
    message (Aider appends its system prompt's rules to it for models it does not know)."""
    texts = (_text_of(m.get("content")) for i, m in enumerate(messages) if i != index and isinstance(m, dict))
    return [t for t in texts if t]


def semantic_question(request: dict[str, Any]) -> str | None:
    """The asked text of the last user message when the request may use L2/L3, else None.

    Coding agents often end a conversation with a tool result or an assistant prefill; the
    answer then depends on that message, which is not a question we can paraphrase-match,
    so such requests (and empty or whitespace-only text) are served by L1 alone.
    """
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    index = _last_user_index(messages)
    if index is None:
        return None
    text = _text_of(messages[index].get("content"))
    if text is None or not text.strip():
        return None
    return asked_part(text, _other_texts(messages, index)).question


def context_of(request: dict[str, Any]) -> Any:
    """The request with the question taken out: what must be equal for a semantic hit.

    Everything else (model, system prompt, earlier turns, trailing instructions, tools,
    tool_choice, response_format, sampling parameters) stays in, so L2 only ever compares
    questions asked in the same context. What a long user message carries around its asked
    part (an appended rules block) stays in too.
    """
    stripped = without_fields({k: v for k, v in request.items() if k not in NON_SEMANTIC_FIELDS}, MARKER_FIELDS)
    messages = copy.deepcopy(stripped.get("messages"))
    index = _last_user_index(messages) if isinstance(messages, list) and messages else None
    if index is not None:
        text = _text_of(messages[index].get("content")) or ""
        messages[index]["content"] = asked_part(text, _other_texts(messages, index)).surroundings
        stripped["messages"] = messages
    return stripped


# ---------------------------------------------------------------------------- answers


def is_cacheable(completion: dict[str, Any]) -> bool:
    """Every choice ended on its own and holds an answer.

    An empty answer (content "" or null without tool calls, or no message at all) is never
    stored: it is a provider's glitch far more often than a meaningful reply, and replaying it
    to every rewording of the question would turn one bad call into many.
    """
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    return all(isinstance(c, dict) and c.get("finish_reason") in CACHEABLE_FINISH_REASONS and _has_answer(c)
               for c in choices)


def _has_answer(choice: dict[str, Any]) -> bool:
    message = choice.get("message")
    if not isinstance(message, dict):
        return False
    content = message.get("content")
    return bool(message.get("tool_calls")) or (isinstance(content, str) and content.strip() != "")


@dataclass
class _Choice:
    role: str = "assistant"
    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    saw_content: bool = False


class StreamAssembler(StreamAssembly):
    """Parses chat-completion SSE bytes as they are relayed and rebuilds the ``chat.completion``.

    It only watches: the relay forwards the upstream's bytes as they are, whatever this makes
    of them. A chunk it cannot follow (a field of an unexpected type) marks the answer
    not cacheable; it never raises into the relay.
    """

    def __init__(self) -> None:
        self._sse = SseParser()
        self._choices: dict[int, _Choice] = {}
        self._meta: dict[str, Any] = {}
        self._usage: dict[str, Any] | None = None
        self._done = False  # saw `data: [DONE]`
        self.broken = False  # a data line we could not read: never cache what we cannot follow

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> None:
        for _, payload in self._sse.feed(data):
            if self.broken:
                continue
            try:
                self._payload(payload)
            except (TypeError, ValueError, AttributeError, KeyError):
                self.broken = True

    def _payload(self, payload: bytes) -> None:
        if payload == b"[DONE]":
            self._done = True
            return
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.broken = True
            return
        if not isinstance(chunk, dict) or "error" in chunk:
            self.broken = True
            return
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if key in chunk and chunk[key] is not None:
                self._meta.setdefault(key, chunk[key])
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise TypeError("choices is not a list")
        for delta_choice in choices:
            self._delta(delta_choice)

    def _delta(self, delta_choice: dict[str, Any]) -> None:
        index = delta_choice.get("index", 0)
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError("index is not an integer")
        choice = self._choices.setdefault(index, _Choice())
        delta = delta_choice.get("delta") or {}
        if delta.get("role"):
            choice.role = str(delta["role"])
        content = delta.get("content")
        if content is not None:
            if not isinstance(content, str):
                raise TypeError("delta.content is not a string")
            choice.content.append(content)
            choice.saw_content = True
        if delta.get("refusal"):
            choice.refusal.append(str(delta["refusal"]))
        for call in delta.get("tool_calls") or []:
            slot = choice.tool_calls.setdefault(
                int(call.get("index", 0)), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            if call.get("id"):
                slot["id"] = call["id"]
            if call.get("type"):
                slot["type"] = call["type"]
            function = call.get("function") or {}
            if function.get("name"):
                slot["function"]["name"] += str(function["name"])
            if function.get("arguments"):
                slot["function"]["arguments"] += str(function["arguments"])
        if delta_choice.get("finish_reason"):
            choice.finish_reason = delta_choice["finish_reason"]

    def answer(self) -> dict[str, Any] | None:
        """The assembled completion if the stream ended normally and is safe to cache."""
        if not self._done or self.broken or not self._choices:
            return None
        choices = []
        for index in sorted(self._choices):
            c = self._choices[index]
            message: dict[str, Any] = {
                "role": c.role,
                "content": "".join(c.content) if c.saw_content or not c.tool_calls else None,
            }
            if c.refusal:
                message["refusal"] = "".join(c.refusal)
            if c.tool_calls:
                message["tool_calls"] = [c.tool_calls[i] for i in sorted(c.tool_calls)]
            choices.append({"index": index, "message": message, "finish_reason": c.finish_reason, "logprobs": None})
        completion: dict[str, Any] = {
            "id": self._meta.get("id", ""),
            "object": "chat.completion",
            "created": self._meta.get("created", int(time.time())),
            "model": self._meta.get("model", ""),
            "choices": choices,
        }
        for key in ("system_fingerprint", "service_tier"):
            if key in self._meta:
                completion[key] = self._meta[key]
        if self._usage is not None:
            completion["usage"] = self._usage
        return completion if is_cacheable(completion) else None

    # the name the tests and older callers use
    completion = answer


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def replay_events(completion: dict[str, Any], *, include_usage: bool) -> Iterator[bytes]:
    """A cached ``chat.completion`` as the SSE events a provider would have sent.

    Per choice: a role chunk, content chunks, tool-call chunks; then one final chunk per
    choice with its finish_reason, a usage chunk when asked for, and ``[DONE]``. Every chunk
    carries the completion's id, so the stream has one stable id.
    """
    base = {
        "id": completion.get("id", ""),
        "object": "chat.completion.chunk",
        "created": completion.get("created", int(time.time())),
        "model": completion.get("model", ""),
    }
    if completion.get("system_fingerprint") is not None:
        base["system_fingerprint"] = completion["system_fingerprint"]

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return _event(
            {**base, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        )

    choices = completion.get("choices") or []
    for position, choice in enumerate(choices):
        index = choice.get("index", position)
        message = choice.get("message") or {}
        content = message.get("content")
        # like the providers: "" opens a text answer, null a tool-call-only one
        yield chunk(index, {"role": message.get("role", "assistant"), "content": "" if isinstance(content, str) else None})
        if isinstance(content, str):
            for start in range(0, len(content), REPLAY_CHUNK_CHARS):
                yield chunk(index, {"content": content[start : start + REPLAY_CHUNK_CHARS]})
        if message.get("refusal"):
            yield chunk(index, {"refusal": message["refusal"]})
        for call_index, call in enumerate(message.get("tool_calls") or []):
            yield chunk(
                index,
                {
                    "tool_calls": [
                        {
                            "index": call_index,
                            "id": call.get("id"),
                            "type": call.get("type", "function"),
                            "function": call.get("function") or {},
                        }
                    ]
                },
            )
    for position, choice in enumerate(choices):
        yield chunk(choice.get("index", position), {}, choice.get("finish_reason") or "stop")
    if include_usage and completion.get("usage") is not None:
        yield _event({**base, "choices": [], "usage": completion["usage"]})
    yield DONE_EVENT


def wants_usage_chunk(request: dict[str, Any]) -> bool:
    options = request.get("stream_options") or {}
    return bool(options.get("include_usage"))


def fresh_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


# ---------------------------------------------------------------------------- the adapter


class ChatCompletions(ProtocolAdapter):
    name = "openai.chat"
    route = "/v1/chat/completions"
    upstream = UpstreamName.OPENAI
    upstream_path = "/chat/completions"
    dialect = ErrorDialect.OPENAI

    def parse(self, body: bytes) -> ParsedRequest:
        request = decode_json_object(body)
        validate_chat_request(request)
        return self.neutral_form(
            request,
            canonical=canonical_request(request),
            question=semantic_question(request),
            context_source=lambda: context_bytes(self.name, context_of(request)),
        )

    def is_complete(self, answer: dict[str, Any]) -> bool:
        return is_cacheable(answer)

    def calls_tools(self, answer: dict[str, Any]) -> bool:
        for choice in answer.get("choices") or ():
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict) and (message.get("tool_calls") or message.get("function_call")):
                return True
            if isinstance(choice, dict) and choice.get("finish_reason") in _CALL_FINISH_REASONS:
                return True
        return False

    def assembler(self) -> StreamAssembler:
        return StreamAssembler()

    def as_fresh_answer(self, answer: dict[str, Any], request: ParsedRequest) -> dict[str, Any]:
        fresh = copy.deepcopy(answer)
        fresh["model"] = request.model
        fresh["id"] = fresh_completion_id()
        fresh["created"] = int(time.time())
        return fresh

    def raw_reason(self, answer: dict[str, Any], request: ParsedRequest) -> HitReason | None:
        body = request.body
        response_format = body.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") in _JSON_OUTPUT_TYPES:
            return HitReason.JSON_OUTPUT
        if body.get("logprobs") or body.get("top_logprobs"):
            return HitReason.LOGPROBS
        choices = answer.get("choices")
        if not isinstance(choices, list) or not choices:
            return HitReason.NOT_TEXT
        for choice in choices:
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                return HitReason.NOT_TEXT
            calls = message.get("tool_calls") or message.get("function_call")
            if calls or choice.get("finish_reason") in _CALL_FINISH_REASONS:
                return HitReason.TOOL_CALLS
            if not isinstance(message.get("content"), str):
                return HitReason.NOT_TEXT
            if choice.get("logprobs"):
                return HitReason.LOGPROBS
        return None

    def text_slots(self, answer: dict[str, Any]) -> Iterator[tuple[str, Callable[[str], None]]]:
        for choice in answer.get("choices") or ():
            message = choice["message"]
            yield message["content"], lambda text, m=message: m.__setitem__("content", text)

    def replay(self, answer: dict[str, Any], request: ParsedRequest) -> Iterable[bytes]:
        return replay_events(answer, include_usage=wants_usage_chunk(request.body))

    def usage_tokens(self, answer: dict[str, Any]) -> int:
        usage = answer.get("usage")
        if not isinstance(usage, dict):
            return 0
        return sum(v for k in ("prompt_tokens", "completion_tokens")
                   if isinstance(v := usage.get(k), int) and not isinstance(v, bool) and v >= 0)

    def mock_answer(self, request: ParsedRequest, text: str, answer_id: str) -> dict[str, Any]:
        n = int(request.body.get("n") or 1)
        if n > MAX_CHOICES:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"'n' must be at most {MAX_CHOICES}", param="n")
        prompt_tokens = len(orjson.dumps(request.body.get("messages"))) // 4
        return {
            "id": "chatcmpl-mock-" + answer_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
                for i in range(n)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": n * len(text.split()),
                "total_tokens": prompt_tokens + n * len(text.split()),
            },
        }
