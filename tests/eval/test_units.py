"""Small pieces of the harness: the right-entry rule, bounded concurrency, overload retries."""

from __future__ import annotations

import asyncio

import pytest

from commands.eval import aio
from commands.eval.aio import map_bounded, retry_overloaded
from commands.eval.data import Pair
from commands.eval.modes import served_is_right
from reflex.tiers import TierUnavailable


def test_served_is_right() -> None:
    dup = Pair(a="A", b="B", duplicate=True)
    non = Pair(a="A", b="B", duplicate=False)
    # own a: right exactly when labelled duplicate
    assert served_is_right(dup, "A") is True
    assert served_is_right(non, "A") is False
    # another entry: wrong whatever the label
    assert served_is_right(dup, "C") is False
    assert served_is_right(non, "C") is False
    # the very question asked, stored verbatim by another pair: right whatever the label
    assert served_is_right(dup, "B") is True
    assert served_is_right(non, "B") is True
    # textual identity is exact: a differently spaced question is another entry
    assert served_is_right(dup, "A ") is False


async def test_map_bounded_keeps_order_and_bound() -> None:
    in_flight = 0
    peak = 0

    async def work(x: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        in_flight -= 1
        return x * x

    seen: list[int] = []
    out = await map_bounded(work, range(50), concurrency=4, on_done=lambda x, _: seen.append(x))
    assert out == [x * x for x in range(50)]
    assert peak == 4
    assert sorted(seen) == list(range(50))
    assert await map_bounded(work, [], concurrency=4) == []


async def test_map_bounded_surfaces_the_first_error() -> None:
    async def work(x: int) -> int:
        if x == 7:
            raise TierUnavailable("verifier", "timeout")
        return x

    with pytest.raises(TierUnavailable, match="timeout"):
        await map_bounded(work, range(20), concurrency=3)


async def test_overload_is_retried_other_failures_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aio, "OVERLOAD_BACKOFF_SECS", 0.0)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TierUnavailable("embedder", "overloaded")
        return "ok"

    assert await retry_overloaded(flaky) == "ok" and calls == 3

    async def always_overloaded() -> str:
        raise TierUnavailable("embedder", "overloaded")

    with pytest.raises(TierUnavailable, match="overloaded"):
        await retry_overloaded(always_overloaded)

    timeouts = 0

    async def times_out() -> str:
        nonlocal timeouts
        timeouts += 1
        raise TierUnavailable("embedder", "timeout")

    with pytest.raises(TierUnavailable, match="timeout"):
        await retry_overloaded(times_out)
    assert timeouts == 1


def test_embedding_cache_round_trip_and_model_isolation(tmp_path) -> None:  # noqa: ANN001
    import numpy as np

    from commands.eval.embedding import EmbeddingCache

    path = tmp_path / "e.sqlite3"
    cache = EmbeddingCache(path, "minilm|384|float32|256")
    vectors = {f"text {i}": np.full(4, i, dtype=np.float32) for i in range(600)}  # > one 500-key query
    cache.put_many(vectors.items())
    cache.close()
    again = EmbeddingCache(path, "minilm|384|float32|256")
    found = again.get_many([*vectors, "never stored"])
    assert set(found) == set(vectors)
    assert all(np.array_equal(found[t], v) for t, v in vectors.items())
    again.close()
    # Another model (or dtype) never reads these vectors.
    other = EmbeddingCache(path, "minilm|384|float16|256")
    assert other.get_many(list(vectors)) == {}
    other.close()


def test_duplicate_groups_view() -> None:
    from commands.eval.modes import DuplicateGroups, served_is_right_by_groups

    pairs = [
        Pair("x", "y", True),
        Pair("z", "y", True),  # z ~ y ~ x: one group
        Pair("x", "w", False),
        Pair("q", "r", True),
    ]
    groups = DuplicateGroups(pairs)
    assert groups.same("x", "z") and groups.same("w", "w") and not groups.same("x", "q")
    # Pair (x, y) served z: wrong by the strict rule, right by the groups.
    assert served_is_right(pairs[0], "z") is False
    assert served_is_right_by_groups(pairs[0], "z", groups) is True
    # Another group stays wrong.
    assert served_is_right_by_groups(pairs[0], "q", groups) is False
    # The pair's own label wins over transitivity.
    assert served_is_right_by_groups(pairs[2], "x", groups) is False
