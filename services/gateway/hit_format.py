"""How a cache hit's content is presented: Tauq envelope or raw (owned by the Tauq work).

Placeholder during bring-up: returns the completion unchanged as `raw`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from reflex.config import ResponseFormat


@dataclass(frozen=True, slots=True)
class HitAccounting:
    format: ResponseFormat  # what was actually served
    tokens_saved: int  # prompt + completion tokens not paid to the provider
    format_delta: int  # tokens of the served content minus tokens of the raw content


def format_hit(
    completion: dict[str, Any],
    *,
    question: str | None,
    request: dict[str, Any],
    requested: ResponseFormat,
    stream: bool,
) -> tuple[dict[str, Any], HitAccounting]:
    """Return a copy of ``completion`` whose message contents are presented in the format to
    serve, plus the token accounting for the X-Reflex-Tokens-Saved / -Format-Delta headers."""
    usage = completion.get("usage") or {}
    saved = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
    return copy.deepcopy(completion), HitAccounting(ResponseFormat.RAW, saved, 0)
