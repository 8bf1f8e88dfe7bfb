"""What the parts of ``reflex bench`` share: a figure (always a ratio to a baseline measured in
the same run), progress lines, percentiles, ports and child processes."""

from __future__ import annotations

import asyncio
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure against its baseline from the same run.

    ``ratio`` is value / baseline_value, so it is unit-free and comparable across machines;
    ``better`` says which way is good ("lower" for latencies, "higher" for throughputs).
    """

    key: str
    section: str
    what: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    better: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("nan")

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"ratio": self.ratio}


class Progress:
    """Progress on stderr (stdout stays clean for ``--json``): one line per step, with the
    elapsed time, so a run of a minute never looks hung."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.perf_counter()

    def step(self, message: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: int) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_up(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers below 500; fail early (with its stderr) if ``proc`` exits."""
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            if proc is not None and proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-3000:] if proc.stderr else ""
                raise RuntimeError(f"{url}: the server exited with {proc.returncode}:\n{err}")
            try:
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up within {timeout:.0f} s")
            await asyncio.sleep(0.1)


def stop_all(procs: Sequence[subprocess.Popen[bytes]], grace: float = 20.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
