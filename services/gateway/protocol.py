"""Validation of a ``POST /v1/chat/completions`` body.

The gateway forwards the request untouched, so it checks only what it must rely on itself
(``model``, ``messages``, ``stream``, ``stream_options``, ``n``) and what it refuses to cache
meaningfully (the legacy ``functions`` field). Everything else, unknown fields included, is
the upstream's business.
"""

from __future__ import annotations

from typing import Any

import orjson

from services.gateway.errors import ErrorKind, GatewayError

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def parse_chat_request(body: bytes) -> dict[str, Any]:
    """Decode and validate a chat-completions body; raise GatewayError (400) otherwise."""
    if not body:
        raise GatewayError(ErrorKind.INVALID_JSON, "request body is empty; expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GatewayError(
            ErrorKind.INVALID_ENCODING, f"request body is not valid UTF-8 (byte offset {exc.start})"
        ) from None
    try:
        request = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(ErrorKind.INVALID_JSON, f"request body is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise GatewayError(ErrorKind.INVALID_JSON, "request body must be a JSON object")
    validate_chat_request(request)
    return request


def _wrong_type(param: str, expected: str) -> GatewayError:
    return GatewayError(ErrorKind.WRONG_TYPE, f"'{param}' must be {expected}", param=param)


def validate_chat_request(request: dict[str, Any]) -> None:
    if "functions" in request or "function_call" in request:
        param = "functions" if "functions" in request else "function_call"
        raise GatewayError(
            ErrorKind.UNSUPPORTED_FIELD,
            f"the legacy '{param}' field is not supported; use 'tools' and 'tool_choice'",
            param=param,
        )
    if "model" not in request:
        raise GatewayError(ErrorKind.MISSING_FIELD, "missing required parameter 'model'", param="model")
    model = request["model"]
    if not isinstance(model, str) or not model.strip():
        raise _wrong_type("model", "a non-empty string")
    if "messages" not in request:
        raise GatewayError(ErrorKind.MISSING_FIELD, "missing required parameter 'messages'", param="messages")
    messages = request["messages"]
    if not isinstance(messages, list) or not messages:
        raise _wrong_type("messages", "a non-empty array of message objects")
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _wrong_type(param, "an object")
        role = message.get("role")
        if not isinstance(role, str):
            raise GatewayError(ErrorKind.MISSING_FIELD, f"'{param}.role' is required", param=f"{param}.role")
        if role not in _ROLES:
            raise GatewayError(
                ErrorKind.INVALID_REQUEST, f"'{param}.role' {role!r} is not a known role", param=f"{param}.role"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _wrong_type(f"{param}.content", "a string, an array of content parts, or null")
        if isinstance(content, list) and not all(isinstance(part, dict) for part in content):
            raise _wrong_type(f"{param}.content", "an array of content-part objects")
    # bool is a subclass of int: reject it explicitly where a count is expected
    if "stream" in request and request["stream"] is not None and not isinstance(request["stream"], bool):
        raise _wrong_type("stream", "a boolean")
    options = request.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _wrong_type("stream_options", "an object")
    n = request.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise _wrong_type("n", "a positive integer")
    if "tools" in request and request["tools"] is not None and not isinstance(request["tools"], list):
        raise _wrong_type("tools", "an array")


def wants_stream(request: dict[str, Any]) -> bool:
    return request.get("stream") is True


def wants_usage_chunk(request: dict[str, Any]) -> bool:
    options = request.get("stream_options") or {}
    return bool(options.get("include_usage"))
