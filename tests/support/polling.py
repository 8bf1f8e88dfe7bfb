"""Waiting, bounded, for a condition a component reaches on its own (a bug fails the test
instead of hanging it)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def until(check: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 5.0,
                interval: float = 0.02) -> None:
    """Poll ``check`` (plain or async) on the running loop until it is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(interval)
