"""Rules that catch what the cross-encoder misses (owned by the verifier-model work).

Placeholder during bring-up: scores pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from reflex.config import Settings


def apply_rules(query: str, candidates: Sequence[str], scores: Sequence[float], settings: Settings) -> list[float]:
    """Return the scores after the enabled rules (each can only lower a score)."""
    return list(scores)


def enabled_rules(settings: Settings) -> list[str]:
    return []
