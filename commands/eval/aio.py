"""Bounded concurrency and overload retries for the harness's bulk calls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from reflex.tiers import TierUnavailable

T = TypeVar("T")
R = TypeVar("R")

# Overload is the one failure worth retrying: the model services answer RESOURCE_EXHAUSTED
# when their bounded queue is full, which a bulk run can cause by design. Timeouts and
# errors are not retried: they mean something is wrong, and the run should say so.
OVERLOAD_RETRIES = 8
OVERLOAD_BACKOFF_SECS = 0.05


async def retry_overloaded(call: Callable[[], Awaitable[R]]) -> R:
    for attempt in range(OVERLOAD_RETRIES + 1):
        try:
            return await call()
        except TierUnavailable as exc:
            if exc.reason != "overloaded" or attempt == OVERLOAD_RETRIES:
                raise
            await asyncio.sleep(OVERLOAD_BACKOFF_SECS * 2**attempt)
    raise AssertionError("unreachable")


async def map_bounded(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    concurrency: int,
    on_done: Callable[[T, R], None] | None = None,
) -> list[R]:
    """``[await fn(x) for x in items]`` with at most ``concurrency`` calls in flight, results in order.

    A fixed set of workers pulls from one iterator instead of one task per item, so a
    56k-pair run holds ``concurrency`` coroutines, not 56k. The first failure cancels the
    rest and propagates.
    """
    indexed = list(enumerate(items))
    results: list[R | None] = [None] * len(indexed)
    queue = iter(indexed)

    async def worker() -> None:
        for index, item in queue:
            result = await fn(item)
            results[index] = result
            if on_done is not None:
                on_done(item, result)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, min(concurrency, len(indexed)))):
                group.create_task(worker())
    except ExceptionGroup as group_error:
        # Callers handle TierUnavailable and friends, not groups: surface the first cause.
        raise group_error.exceptions[0] from None
    return results  # type: ignore[return-value]
