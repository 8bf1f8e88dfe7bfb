"""``reflex gateway`` as a real process: it starts from REFLEX_* variables, logs its
effective settings with secrets redacted, serves, and on SIGTERM stops taking connections,
finishes the request in flight and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.support.fake_upstream import FakeUpstream, slow
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
IN_FLIGHT_SECS = 4.0  # how long the fake upstream holds the in-flight request
DRAINING = "signal received: draining"  # services/gateway/main.py logs it before it stops listening


class Output:
    """The process's output, read as it comes, so a test can wait for a line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: any(text in line for line in self.lines), timeout)

    @property
    def text(self) -> str:
        self._thread.join(10)
        return "".join(self.lines)


def chat(port: int, content: str) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    headers = {"Authorization": "Bearer sk-caller-secret", "X-Reflex-Format": "raw"}
    # a fresh client each time: a new TCP connection, never a kept-alive one
    return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_reflex_gateway_process_serves_and_drains_on_sigterm(fake_upstream: FakeUpstream) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFLEX_")} | {
        "REFLEX_PORT": str(port),
        "REFLEX_UPSTREAM_URL": fake_upstream.url,
        "REFLEX_MOCK_PROVIDER": "0",
        "REFLEX_SEMANTIC": "0",
        "REFLEX_UPSTREAM_API_KEY": "sk-central-very-secret",
        "REFLEX_SHUTDOWN_GRACE_SECS": "15",
        "REFLEX_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from commands.cli import main; sys.exit(main(['gateway']))"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output = Output(process)
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert process.poll() is None, output.text
                assert time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.1)
        first = chat(port, "hi")
        assert first.status_code == 200 and first.headers["x-reflex-status"] == "miss"

        # A request that is still at the upstream when SIGTERM arrives.
        fake_upstream.fail_next(slow(IN_FLIGHT_SECS))
        in_flight = pool.submit(chat, port, "a slow one")
        deadline = time.monotonic() + 30
        while fake_upstream.chat_count < 2:
            assert time.monotonic() < deadline and not in_flight.done(), "the request never reached the upstream"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        assert output.wait_for(DRAINING, timeout=IN_FLIGHT_SECS / 2), output.text

        # Draining: a new connection is refused (the listener is closed) or told 503, while the
        # request in flight is still being served.
        try:
            late = chat(port, "too late")
        except httpx.TransportError:
            pass  # refused (or reset): not accepted
        else:
            assert late.status_code == 503, (late.status_code, late.text)
        assert not in_flight.done(), "the in-flight request ended before the drain was observed"
        assert fake_upstream.chat_count == 2  # the late request never reached the upstream

        # ... which completes normally, and then the process exits cleanly.
        answer = in_flight.result(timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-reflex-status"] == "miss"
        assert answer.json()["choices"][0]["message"]["content"] == "Answer #2 to: a slow one"
        assert process.wait(30) == 0, output.text
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if process.poll() is None:
            process.kill()
            process.wait()
    text = output.text
    assert "REFLEX_UPSTREAM_API_KEY" in text and "REFLEX_SHUTDOWN_GRACE_SECS" in text  # effective settings logged
    assert "sk-central-very-secret" not in text
    assert "sk-caller-secret" not in text
