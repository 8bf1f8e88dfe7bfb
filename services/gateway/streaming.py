"""Server-sent events both ways: assemble a relayed upstream stream into a completion, and
replay a cached completion as a stream.

The relay itself forwards the upstream's bytes untouched as they arrive (so the time to first
byte is the upstream's); ``StreamAssembler`` only watches them to decide, at the end, whether
the answer is complete enough to cache.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

# Only answers that ended on their own are safe to replay: `length` is truncated,
# `content_filter` is a refusal of this particular sampling, None means the stream broke.
CACHEABLE_FINISH_REASONS = frozenset({"stop", "tool_calls"})

# Characters per replayed content chunk: small enough that a client rendering a hit sees it
# arrive like a stream, large enough that a long answer is not thousands of SSE events.
REPLAY_CHUNK_CHARS = 64


def is_cacheable(completion: dict[str, Any]) -> bool:
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    return all(isinstance(c, dict) and c.get("finish_reason") in CACHEABLE_FINISH_REASONS for c in choices)


@dataclass
class _Choice:
    role: str = "assistant"
    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    saw_content: bool = False


class StreamAssembler:
    """Parses SSE bytes as they are relayed and rebuilds the ``chat.completion``."""

    def __init__(self) -> None:
        self._buffer = b""
        self._choices: dict[int, _Choice] = {}
        self._meta: dict[str, Any] = {}
        self._usage: dict[str, Any] | None = None
        self.done = False  # saw `data: [DONE]`
        self.broken = False  # a data line that was not JSON: never cache what we cannot read

    def feed(self, data: bytes) -> None:
        self._buffer += data
        # Events end with a blank line; lines may end in \r\n. Keep the unfinished tail.
        *lines, self._buffer = self._buffer.replace(b"\r\n", b"\n").split(b"\n")
        for line in lines:
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return  # blank separators, comments (": keep-alive"), event:/id: fields
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.broken = True
            return
        if not isinstance(chunk, dict):
            self.broken = True
            return
        if "error" in chunk:
            self.broken = True
            return
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if key in chunk and chunk[key] is not None:
                self._meta.setdefault(key, chunk[key])
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for delta_choice in chunk.get("choices") or []:
            self._delta(delta_choice)

    def _delta(self, delta_choice: dict[str, Any]) -> None:
        choice = self._choices.setdefault(int(delta_choice.get("index", 0)), _Choice())
        delta = delta_choice.get("delta") or {}
        if delta.get("role"):
            choice.role = delta["role"]
        if delta.get("content") is not None:
            choice.content.append(delta["content"])
            choice.saw_content = True
        if delta.get("refusal"):
            choice.refusal.append(delta["refusal"])
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
                slot["function"]["name"] += function["name"]
            if function.get("arguments"):
                slot["function"]["arguments"] += function["arguments"]
        if delta_choice.get("finish_reason"):
            choice.finish_reason = delta_choice["finish_reason"]

    def completion(self) -> dict[str, Any] | None:
        """The assembled completion if the stream ended normally and is safe to cache."""
        if not self.done or self.broken or not self._choices:
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


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


DONE_EVENT = b"data: [DONE]\n\n"


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
