"""What a cache entry holds, and its one wire format (orjson bytes), shared by L1 and L2."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class CachedEntry:
    # hex blake3 of (tenant, canonical request): the L1 key, also the L2 point's identity
    entry_id: str
    # the chat.completion object as the provider produced it (assembled from chunks for a
    # stream), so a `raw` hit replays the provider's content byte for byte
    completion: dict[str, Any]
    # text of the last user message it answered; None when the request was not eligible for
    # the semantic tiers (last message a tool result, empty, ...)
    question: str | None = None
    # the request's prompt token count as the provider reported it, for X-Reflex-Tokens-Saved
    created_at: float = field(default_factory=time.time)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {"v": 1, "id": self.entry_id, "q": self.question, "c": self.completion, "t": self.created_at}
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "CachedEntry":
        obj = orjson.loads(data)
        if not isinstance(obj, dict) or obj.get("v") != 1:
            raise ValueError("not a Reflex cache entry (or an unknown version)")
        return cls(entry_id=obj["id"], completion=obj["c"], question=obj["q"], created_at=obj["t"])
