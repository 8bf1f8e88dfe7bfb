"""What exact repeats would parse again, parsed once.

An exact repeat is what an L1 hit usually is: an SDK or a script sending the same bytes, and
the cache answering with the same entry. Each of these is a pure function of its inputs, so
each is kept in a small LRU (``ParseOnce``) of its own, per app:

- request bodies, and the heads read from them and the deciding headers (request_head.py):
  validating, canonicalizing and keying a small chat request is about 11 us of the gateway's
  55 us of own work on an L1 hit (timeit), and the credential, tenant hash and exact key a few
  more;
- cache entries (cascade): decoding a hit's entry, 2.6 us for a small one;
- exact hits' response bodies, by (request head, entry) (handlers): presenting and serializing.

A kept value is shared by every request that sent (or hit) the same bytes, so nothing may
modify it after parsing. Nothing does: a ParsedRequest is changed only through
dataclasses.replace, a RequestHead is frozen, and an answer is deep-copied before it is
rewritten (hit_format, as_fresh_answer). Only small inputs are kept, within a byte budget: a
large one (a coding agent's 80 KB request) rarely repeats byte for byte, since per-run ids
differ, and its parsed form takes several times its size in memory. Parse errors are not kept; they are raised again.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from cachetools import LRUCache

T = TypeVar("T")

# Inputs up to this size are kept ...
MAX_KEPT_INPUT_BYTES = 16 * 1024
# ... until the kept inputs add up to this (parsed, they take several times as much).
KEPT_BYTES_BUDGET = 4 * 1024 * 1024


class ParseOnce(Generic[T]):
    """``get(key, size, parse)``: what ``parse()`` returned the last time ``key`` was seen,
    else ``parse()``, kept when ``size`` (the input's bytes) is small. For the event loop only."""

    def __init__(self, max_input_bytes: int = MAX_KEPT_INPUT_BYTES, budget_bytes: int = KEPT_BYTES_BUDGET) -> None:
        self._max_input_bytes = max_input_bytes
        # values are (parsed, input size); the budget counts input sizes
        self._kept: LRUCache[Hashable, tuple[T, int]] = LRUCache(maxsize=budget_bytes, getsizeof=lambda kept: kept[1])

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key: Hashable, size: int, parse: Callable[[], T]) -> T:
        if size > self._max_input_bytes:
            return parse()
        kept = self._kept.get(key)
        if kept is not None:
            return kept[0]
        value = parse()
        self._kept[key] = (value, max(size, 1))
        return value
