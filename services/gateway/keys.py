"""Who is asking (tenant), what exactly they ask (L1 key), and in which context (L2 filter).

All three are blake3 hashes, so raw API keys and prompts never become identifiers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from blake3 import blake3

from reflex.tiers import L2Scope

ANONYMOUS_TENANT = "anonymous"

# Fields that do not change the answer: a streaming and a non-streaming request with the
# same content share one entry, and per-end-user tags do not split the cache.
NON_SEMANTIC_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "store"})


def api_key_from_headers(headers: Mapping[str, str]) -> str | None:
    """OpenAI's ``Authorization: Bearer <key>``, else Anthropic-style ``x-api-key``."""
    auth = headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


def tenant_id(api_key: str | None) -> str:
    """blake3 of the key (hex); every keyless caller shares the ``anonymous`` tenant."""
    if api_key is None:
        return ANONYMOUS_TENANT
    return blake3(api_key.encode("utf-8")).hexdigest()


def canonical_request(request: Mapping[str, Any]) -> bytes:
    """Sorted-key JSON of the request without the non-semantic fields."""
    kept = {k: v for k, v in request.items() if k not in NON_SEMANTIC_FIELDS}
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)


def l1_key(tenant: str, canonical: bytes) -> str:
    # The tenant is length-prefixed so that no (tenant, request) pair can collide with another
    # by moving bytes across the boundary.
    h = blake3(len(tenant).to_bytes(4, "big"))
    h.update(tenant.encode("utf-8"))
    h.update(canonical)
    return h.hexdigest()


def _text_of(content: Any) -> str | None:
    """The text of a message's content: the string itself, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        ]
        return "\n".join(texts) if texts else None
    return None


def semantic_question(request: Mapping[str, Any]) -> str | None:
    """The last user message's text when the request may use L2/L3, else None.

    Coding agents often end a conversation with a tool result or an assistant prefill; the
    answer then depends on that message, which is not a question we can paraphrase-match,
    so such requests (and empty or whitespace-only text) are served by L1 alone.
    """
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    text = _text_of(last.get("content"))
    if text is None or not text.strip():
        return None
    return text


def context_hash(request: Mapping[str, Any]) -> str:
    """blake3 of the canonical request with the text of the last user message removed.

    Everything else — model, system prompt, earlier turns, tools, tool_choice,
    response_format, sampling parameters, and any non-text parts of the last message such
    as images — stays in, so L2 only ever compares questions asked in the same context.
    """
    stripped = {k: v for k, v in request.items() if k not in NON_SEMANTIC_FIELDS}
    messages = copy.deepcopy(stripped.get("messages"))
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        last = messages[-1]
        content = last.get("content")
        if isinstance(content, str):
            last["content"] = ""
        elif isinstance(content, list):
            last["content"] = [p for p in content if not (isinstance(p, dict) and p.get("type") == "text")]
        stripped["messages"] = messages
    return blake3(orjson.dumps(stripped, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class RequestKeys:
    """Everything the cascade needs to look a request up and to store its answer."""

    tenant: str
    model: str
    l1_key: str
    question: str | None  # None: not eligible for L2/L3
    context_hash: str | None  # computed only when eligible

    @classmethod
    def of(cls, tenant: str, request: Mapping[str, Any]) -> "RequestKeys":
        question = semantic_question(request)
        return cls(
            tenant=tenant,
            model=str(request["model"]),
            l1_key=l1_key(tenant, canonical_request(request)),
            question=question,
            context_hash=context_hash(request) if question is not None else None,
        )

    @property
    def scope(self) -> L2Scope | None:
        """The L2 scope of this request; None when it may only use L1."""
        if self.question is None or self.context_hash is None:
            return None
        return L2Scope(tenant=self.tenant, model=self.model, context_hash=self.context_hash)
