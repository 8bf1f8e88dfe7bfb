"""The one way a Reflex process learns it should stop: SIGTERM (Kubernetes, ``docker stop``)
or SIGINT (Ctrl-C) sets an asyncio event that the process's runner awaits, then drains."""

from __future__ import annotations

import asyncio
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_event() -> asyncio.Event:
    """An event that the next SIGTERM or SIGINT sets, on the running loop.

    The handlers stay installed, so a second signal during the drain is absorbed rather than
    killing the process mid-drain (the orchestrator's own kill timeout still applies).
    """
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, event.set)
    return event
